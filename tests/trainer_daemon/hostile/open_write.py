# gate: builtin 'open'
# runtime: rejected,error | sandbox blocked open for writing
from torch import nn


class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(192, 28)

    def forward(self, x):
        with open("OUTSIDE_DIR/pwned", "w") as f:
            f.write("written from forward")
        return self.head(x.flatten(1))
