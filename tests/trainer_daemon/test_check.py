"""`agentnas check-model`: the validate cap covers the whole check."""

from __future__ import annotations

import inspect
import time

import pytest

from agentnas.trainer_daemon.check import VALIDATE_CAP_S, check_model_file

STUCK = """
import torch
from torch import nn

class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        while True:
            pass
"""


def test_the_cli_default_is_the_run_setting():
    from agentnas.bus.settings import ProxySettings
    from agentnas.ops.cli import check_model

    assert VALIDATE_CAP_S == ProxySettings().validate_time_cap_s
    assert inspect.signature(check_model).parameters["validate_cap_s"].default == VALIDATE_CAP_S


@pytest.mark.timeout(120)
async def test_a_constructor_that_never_returns_times_out_at_the_cap(tmp_path):
    started = time.monotonic()
    result = await check_model_file(STUCK, "addigits", device="cpu", memory_mb=1024, scratch_root=tmp_path,
                                    validate_cap_s=2.0)
    assert result.status == "timeout"
    assert result.reason == "validate took longer than its cap of 2 s (wall clock, the whole job) during build"
    assert time.monotonic() - started < 60  # a worker's start-up plus the cap, not minutes
