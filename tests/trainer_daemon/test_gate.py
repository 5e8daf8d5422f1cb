"""The static gate: realistic models pass, every escape hatch is refused with a clear reason."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from agentnas.trainer_daemon.gate import MAX_SOURCE_BYTES, check_source

HOSTILE = Path(__file__).parent / "hostile"

RESNET = '''
import math
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    """A residual block; calls like __call__ go through nn.Module."""

    def __init__(self, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(out)))


class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True))
        self.layer1 = self._make_layer(32, 2)
        self.head = nn.Linear(32, 28)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(m.weight)
                nn.init.uniform_(m.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def _make_layer(self, channels, blocks):
        return nn.Sequential(*[Block(channels) for _ in range(blocks)])

    def forward(self, x):
        x = self.layer1(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
'''

AUGMENTING = '''
import torch
from torch import nn


class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 64), nn.GELU(), nn.Linear(64, 28))

    def forward(self, x):
        if self.training:
            flip = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5
            x = torch.where(flip, x.flip(-1), x)
            x = x + 0.05 * torch.randn_like(x)
        return self.net(x)
'''

RESHAPING = '''
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class Config:
    dim: int = 32
    heads: int = 4


class Attention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.scale = 1.0 / math.sqrt(cfg.dim // cfg.heads)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.einsum("bhqd,bhkd->bhqk", q, k) * self.scale
        out = torch.einsum("bhqk,bhkd->bhqd", att.softmax(-1), v)
        return out.transpose(1, 2).reshape(b, n, d)


class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        cfg = Config()
        self.embed = nn.Conv2d(3, cfg.dim, 1)
        self.blocks = nn.ModuleList([Attention(cfg) for _ in range(2)])
        self.norms = nn.ModuleList([nn.LayerNorm(cfg.dim) for _ in range(2)])
        self.act = partial(F.gelu, approximate="tanh")
        self.head = nn.Linear(cfg.dim, 28)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = self.embed(x).flatten(2).transpose(1, 2)
        for norm, block in zip(self.norms, self.blocks):
            x = x + self.act(block(norm(x)))
        layer = getattr(self, "head")
        return layer(x.mean(dim=1))
'''

AUTOGRAD = '''
import torch
from torch import nn


class RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.round()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() < 4).float()


class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(192, 28)
        self.register_buffer("scale", torch.ones(1))

    def forward(self, x):
        return self.head(RoundSTE.apply(x * self.scale).flatten(1))


if __name__ == "__main__":
    print(Architecture())
'''


@pytest.mark.parametrize("source", [RESNET, AUGMENTING, RESHAPING, AUTOGRAD],
                         ids=["resnet", "augmenting", "reshaping", "autograd"])
def test_realistic_models_pass(source):
    assert check_source(source) == []


def test_realistic_models_compile_and_run(monkeypatch):
    """The accepted sources are real, working models (so the gate was tested on honest input)."""
    import types

    import torch

    for source in (RESNET, AUGMENTING, RESHAPING, AUTOGRAD):
        module = types.ModuleType("gate_candidate")
        monkeypatch.setitem(sys.modules, module.__name__, module)  # dataclasses look their module up
        exec(compile(source, "<candidate>", "exec"), module.__dict__)
        model = module.Architecture()
        assert model(torch.randn(2, 3, 8, 8)).shape == (2, 28)


ARCH = "\nclass Architecture: pass\n"

REJECTED = [
    # (name, source, expected substring of a reason)
    ("syntax", "import torch\nclass Architecture(:\n    pass\n", "line 2: syntax error"),
    ("no_architecture", "import torch\nclass Model: pass\n", "no class named Architecture"),
    ("nested_architecture", "def f():\n    class Architecture: pass\n", "no class named Architecture"),
    ("numpy", "import numpy as np" + ARCH, "line 1: import of 'numpy'"),
    ("os_path", "from os import path" + ARCH, "import from 'os'"),
    ("relative", "from . import tasks" + ARCH, "import from '.'"),
    ("star", "from torch import *" + ARCH, "'from torch import *'"),
    ("importlib", "import importlib" + ARCH, "import of 'importlib'"),
    ("pickle", "import pickle" + ARCH, "import of 'pickle'"),
    ("builtins", "import builtins" + ARCH, "import of 'builtins'"),
    ("torch_load_import", "from torch import load" + ARCH, "import of 'torch.load'"),
    ("torch_utils_import", "import torch.utils.data" + ARCH, "import of 'torch.utils.data'"),
    ("cpp_extension", "import torch\nx = torch.utils.cpp_extension.load_inline" + ARCH,
     "use of 'torch.utils.cpp_extension.load_inline'"),
    ("torch_ops", "import torch\nx = torch.ops.aten" + ARCH, "use of 'torch.ops.aten'"),
    ("torch_private", "import torch\nx = torch._C._get_tracing_state()" + ARCH, "use of 'torch._C"),
    ("torch_cuda", "import torch\ntorch.cuda.set_per_process_memory_fraction(1.0)" + ARCH, "use of 'torch.cuda"),
    ("torch_mp", "import torch as t\np = t.multiprocessing.Process" + ARCH, "use of 'torch.multiprocessing"),
    ("torch_jit", "from torch import jit" + ARCH, "import of 'torch.jit'"),
    ("torch_from_file", "import torch\nx = torch.from_file('/etc/passwd')" + ARCH, "use of 'torch.from_file'"),
    ("torch_alias_name", "from torch import save as keep\nkeep(1, 'x')" + ARCH, "use of 'torch.save'"),
    ("tofile", "import torch\ntorch.ones(3).numpy().tofile('x')" + ARCH, "attribute 'tofile'"),
    ("storage_share", "import torch\ntorch.ones(3).share_memory_()" + ARCH, "attribute 'share_memory_'"),
    ("private_share", "import torch\ntorch.ones(3)._share_filename_cpu_()" + ARCH, "private attribute"),
    ("eval", "eval('1')" + ARCH, "builtin 'eval'"),
    ("exec_alias", "run = exec" + ARCH, "builtin 'exec'"),
    ("compile", "compile('1', 'x', 'eval')" + ARCH, "builtin 'compile'"),
    ("open", "open('/etc/passwd')" + ARCH, "builtin 'open'"),
    ("globals", "g = globals()" + ARCH, "builtin 'globals'"),
    ("vars", "v = vars()" + ARCH, "builtin 'vars'"),
    ("breakpoint", "breakpoint()" + ARCH, "builtin 'breakpoint'"),
    ("input", "x = input()" + ARCH, "builtin 'input'"),
    ("exit", "exit(3)" + ARCH, "builtin 'exit'"),
    ("getattr_variable", "name = 'x'\ny = getattr(object, name)" + ARCH, "'getattr' other than a direct call"),
    ("getattr_alias", "g = getattr" + ARCH, "'getattr' other than a direct call"),
    ("setattr_variable", "setattr(object, 'x'.upper(), 1)" + ARCH, "'setattr' other than a direct call"),
    ("getattr_torch_load", "import torch\nf = getattr(torch, 'load')" + ARCH, "use of 'torch.load'"),
    ("getattr_dunder", "c = getattr((), '__class__')" + ARCH, "string naming '__class__'"),
    ("self_class", "class Architecture:\n    def f(self):\n        return self.__class__\n", "'__class__'"),
    ("dunder_builtins", "b = __builtins__" + ARCH, "dunder name '__builtins__'"),
    ("dunder_alias", "import math as __builtins__" + ARCH, "dunder name '__builtins__'"),
    ("dunder_import", "m = __import__('os')" + ARCH, "dunder name '__import__'"),
    ("mro_walk", "s = object.__subclasses__()" + ARCH, "dunder attribute '__subclasses__'"),
    ("attrgetter", "import operator\nf = operator.attrgetter('x')" + ARCH, "attribute 'attrgetter'"),
    ("type_hints", "import typing\nh = typing.get_type_hints(int)" + ARCH, "attribute 'get_type_hints'"),
    ("generator_frame", "g = (i for i in [1])\nf = g.gi_frame" + ARCH, "attribute 'gi_frame'"),
    ("frame_globals", "def f(frame):\n    return frame.f_globals" + ARCH, "attribute 'f_globals'"),
    ("environ", "import math\ne = math.environ" + ARCH, "attribute 'environ'"),
    ("format_frame", "s = '{0.gi_frame.f_globals}'.format(1)" + ARCH, "format field '0.gi_frame.f_globals'"),
    ("format_dunder", "s = '{0.__class__}'.format(1)" + ARCH, "string naming '__class__'"),
    # stdlib modules that allowed modules re-export as attributes
    ("torch_sys", "import torch\nm = torch.sys.modules" + ARCH, "attribute 'sys' (a module"),
    ("torch_os_write", "import torch\ntorch.os.write(5, b'x')" + ARCH, "attribute 'os' (a module"),
    ("dataclasses_sys", "import dataclasses\nm = dataclasses.sys.modules" + ARCH, "attribute 'sys'"),
    ("enum_builtins", "import enum\nf = enum.bltns.open" + ARCH, "attribute 'bltns'"),
    ("collections_sys", "import collections\nm = collections._sys.modules" + ARCH, "attribute '_sys'"),
    ("typing_re", "import typing\nr = typing.stdlib_re" + ARCH, "attribute 'stdlib_re'"),
    ("torch_threading", "from torch import nn\nimport torch\nt = torch.threading.Thread" + ARCH,
     "attribute 'threading'"),
    ("getattr_torch_sys", "import torch\nm = getattr(torch, 'sys')" + ARCH, "sys"),
]


@pytest.mark.parametrize("source,expected", [case[1:] for case in REJECTED], ids=[case[0] for case in REJECTED])
def test_rejected_with_reason(source, expected):
    reasons = check_source(source)
    assert reasons, "the gate let it through"
    assert any(expected in reason for reason in reasons), reasons
    assert all("\n" not in reason for reason in reasons)


def test_reasons_carry_line_numbers_in_order():
    source = "import torch\nimport os\nx = eval('1')\nclass Architecture: pass\n"
    assert check_source(source) == ["line 2: import of 'os' is not allowed", "line 3: builtin 'eval' is not allowed"]


def test_one_reason_per_attribute_chain():
    reasons = check_source("import torch\nx = torch.utils.data.DataLoader" + ARCH)
    assert reasons == ["line 2: use of 'torch.utils.data.DataLoader' is not allowed"]


def test_docstrings_may_mention_dunders_but_strings_in_use_may_not():
    assert check_source('"""Calls __call__ and reads __dict__."""' + ARCH) == []
    assert check_source('x = "__dict__"' + ARCH) != []


def test_size_cap():
    padding = "#" * (MAX_SOURCE_BYTES + 1)
    reasons = check_source(padding + ARCH)
    assert len(reasons) == 1 and "byte limit" in reasons[0]
    assert check_source("#" * (MAX_SOURCE_BYTES - 100) + ARCH) == []


@pytest.mark.parametrize("source", ["x = " + "-" * 150_000 + "1" + ARCH, "a" + ".b" * 60_000 + ARCH, "\0" + ARCH],
                         ids=["deep_unary", "long_chain", "null_byte"])
def test_absurd_sources_give_a_reason_not_a_crash(source):
    reasons = check_source(source)
    assert len(reasons) == 1 and ("cannot be parsed" in reasons[0] or "syntax error" in reasons[0])


def _expectation(path: Path) -> str:
    match = re.search(r"^# gate: (.+)$", path.read_text(), re.MULTILINE)
    assert match, f"{path.name} has no '# gate:' line"
    return match.group(1).strip()


@pytest.mark.parametrize("path", sorted(HOSTILE.glob("*.py")), ids=lambda p: p.stem)
def test_hostile_corpus(path):
    expected = _expectation(path)
    reasons = check_source(path.read_text())
    if expected == "pass":  # only the runtime walls can stop these (test_sandbox.py)
        assert reasons == []
    else:
        assert any(expected in reason for reason in reasons), reasons


def test_corpus_is_not_empty():
    assert len(list(HOSTILE.glob("*.py"))) >= 20
