# gate: import of 'subprocess'
# runtime: rejected,error | sandbox blocked subprocess.Popen
import subprocess

from torch import nn


class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        subprocess.run(["touch", "OUTSIDE_DIR/pwned"], check=True)
        self.head = nn.Linear(192, 28)

    def forward(self, x):
        return self.head(x.flatten(1))
