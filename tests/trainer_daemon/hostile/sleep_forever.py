# Uses no CPU, so only the wall-clock deadline can stop it.
# gate: import of 'time'
# runtime: timeout | wall-clock limit
import time

from torch import nn


class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        time.sleep(3600)

    def forward(self, x):
        return x
