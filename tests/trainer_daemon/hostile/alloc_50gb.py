# gate: pass
# runtime: oom | allocate
import torch
from torch import nn


class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        self.hog = torch.empty(50 * 2**30, dtype=torch.uint8).fill_(1)
        self.head = nn.Linear(192, 28)

    def forward(self, x):
        return self.head(x.flatten(1))
