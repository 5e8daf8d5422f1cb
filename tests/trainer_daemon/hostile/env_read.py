# Report the environment through the error message (the test has a fake API key set).
# gate: import of 'os'
# runtime: rejected,error | ENVIRONMENT
import os

from torch import nn


class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        raise RuntimeError("ENVIRONMENT " + " ".join(f"{k}={v}" for k, v in os.environ.items()))

    def forward(self, x):
        return x
