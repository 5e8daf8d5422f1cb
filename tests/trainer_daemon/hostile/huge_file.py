# Writing inside the scratch folder is allowed, but not past the file-size limit.
# gate: builtin 'open'
# runtime: rejected,error | File too large
from torch import nn


class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        block = b"\0" * 2**20
        with open("big.bin", "wb") as f:
            for _ in range(1024):
                f.write(block)
        self.head = nn.Linear(192, 28)

    def forward(self, x):
        return self.head(x.flatten(1))
