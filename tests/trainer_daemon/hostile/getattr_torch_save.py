# torch.save writes through C++, which the audit hook cannot see: the read-only mounts stop it.
# needs: namespaces
# gate: 'getattr' other than a direct call with a literal name
# runtime: rejected,error | Read-only file system
import torch
from torch import nn

SAVE = "sa" + "ve"


class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(192, 28)
        getattr(torch, SAVE)(self.state_dict(), "OUTSIDE_DIR/weights.pt")

    def forward(self, x):
        return self.head(x.flatten(1))
