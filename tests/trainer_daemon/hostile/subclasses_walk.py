# Reach os.system through object.__subclasses__() without importing anything.
# gate: dunder attribute '__subclasses__'
# runtime: rejected,error | sandbox blocked os.system
from torch import nn


def find_system():
    for cls in ().__class__.__base__.__subclasses__():
        if cls.__name__ == "_wrap_close":
            return cls.__init__.__globals__["system"]
    raise LookupError("no _wrap_close")


class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        find_system()("touch OUTSIDE_DIR/pwned")
        self.head = nn.Linear(192, 28)

    def forward(self, x):
        return self.head(x.flatten(1))
