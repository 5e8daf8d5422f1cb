# Signal 0 only checks that the parent exists: harmless if the wall failed, but the call must be refused.
# gate: import of 'os'
# runtime: rejected,error | sandbox blocked os.kill
import os

from torch import nn


class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        os.kill(os.getppid(), 0)
        self.head = nn.Linear(192, 28)

    def forward(self, x):
        return self.head(x.flatten(1))
