# str.format reads attributes named inside the braces.
# gate: string naming '__globals__'
from torch import nn


class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        self.leak = "{0.__init__.__globals__}".format(self)
        self.head = nn.Linear(192, 28)

    def forward(self, x):
        return self.head(x.flatten(1))
