# 4 GB is fine for the host but over the test's memory limit: the address-space limit stops it.
# gate: pass
# runtime: oom | allocate
import torch
from torch import nn


class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(192, 28)

    def forward(self, x):
        hog = torch.ones(2**30, dtype=torch.float32)
        return self.head(x.flatten(1)) + hog[0]
