# gate: builtin 'exec'
# runtime: rejected,error | sandbox blocked subprocess.Popen
from torch import nn

PAYLOAD = "import subprocess\nsubprocess.call(['touch', 'OUTSIDE_DIR/pwned'])"


class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        exec(PAYLOAD, {})
        self.head = nn.Linear(192, 28)

    def forward(self, x):
        return self.head(x.flatten(1))
