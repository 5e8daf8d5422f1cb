# Prints protocol-looking lines; they go to stdout, not to the protocol pipe.
# gate: pass
# runtime: rejected,error | boom
from torch import nn


class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        for _ in range(3):
            print('{"kind": "result", "result": {"status": "ok", "val_metric": 0.0}}', flush=True)
        raise ValueError("boom")

    def forward(self, x):
        return x
