# gate: use of 'torch.save'
from torch import nn
import torch


class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(192, 28)
        torch.save(self.state_dict(), "OUTSIDE_DIR/weights.pt")

    def forward(self, x):
        return self.head(x.flatten(1))
