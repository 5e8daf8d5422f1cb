# gate: pass
# runtime: timeout | CPU time limit
from torch import nn


class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        n = 0
        while True:
            n += 1

    def forward(self, x):
        return x
