"""One evaluation job as the sandboxed worker receives it, its result, and how a failure is named.

Pure data (no torch), so the pool (sandbox.py) can read a job's kind and caps
without importing the harness.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Literal

import msgspec

from agentnas.bus.messages import EquivalenceOptions, GdasOptions
from agentnas.bus.space import SlottedSpace

__all__ = ["WHOLE_JOB_CAP", "WHOLE_JOB_GRACE_S", "Job", "JobFailed", "JobResult", "MachineryFault", "Stage", "one_line",
           "weights_file"]

Request = Literal["validate", "proxy", "final_wave1", "final_wave2", "equivalence", "gdas"]

# Requests whose time_cap_s caps the whole job in wall-clock seconds (build, probe, everything),
# not the device time of training steps: they train nothing, so a slow one is stuck, not busy.
WHOLE_JOB_CAP = frozenset({"validate", "equivalence"})
WHOLE_JOB_GRACE_S = 10.0  # what the pool's wall-clock deadline should add to such a cap


class Job(msgspec.Struct, frozen=True, kw_only=True):
    eval_id: str
    request: Request
    model_source: str  # defines class Architecture(nn.Module) with __init__(self) and forward(self, x)
    recipe: dict | str = {}  # str = JSON text, may be malformed; gdas: "" / {} = the space's seed recipe
    time_cap_s: float = 3600.0  # device time of training steps; validate/equivalence: wall clock, whole job
    memory_cap_mb: float = 11264.0
    seed: int = 42
    weights_dir: str = ""  # where to save weights ("" = don't save)
    reference_source: str = ""  # equivalence: the original model (model_source is the rewrite)
    equivalence: EquivalenceOptions | None = None  # equivalence: tolerances (None = defaults)
    space: SlottedSpace | None = None  # gdas: the slotted space to search
    gdas: GdasOptions | None = None  # gdas: the search's settings


class JobResult(msgspec.Struct, kw_only=True):
    status: Literal["ok", "rejected", "oom", "timeout", "error"]
    reason: str = ""  # one line
    val_metric: float | None = None
    test_metric: float | None = None
    metric_name: str = ""
    params: int | None = None  # gdas: of the chosen architecture
    flops: int | None = None  # gdas: of the chosen architecture
    peak_memory_mb: float | None = None
    device_time_s: float = 0.0
    epochs_done: int = 0
    best_epoch: int | None = None
    weights_path: str = ""
    warnings: list[str] = []
    traceback: str = ""  # truncated to ~4000 chars
    first_step_at: float | None = None  # wall-clock time of the first training step (queue latency)
    choices: list[int] | None = None  # gdas: argmax of the architecture parameters per slot (0 if frozen)
    max_abs_diff: float | None = None  # equivalence: largest |rewrite - original| output difference
    # A fault of the machinery, not the candidate's (its worker killed from outside, the pool
    # closing under it): the daemon retries the job and never reports this result.
    fault: str = ""


class JobFailed(Exception):
    """A decided outcome other than ok, with its one-line reason."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class MachineryFault(Exception):
    """Something the harness itself could not do (write the weights on a full disk): not the
    candidate's outcome; the job comes back as a `fault` and is tried again."""


@dataclasses.dataclass
class Stage:
    """Where a job is: names the step in a failure's reason, and the status a candidate's fault gets there."""

    name: str = "recipe"
    status: str = "rejected"

    def enter(self, name: str, status: str) -> None:
        self.name, self.status = name, status


def weights_file(weights_dir: str, eval_id: str) -> str:
    """Where an evaluation's checkpoint lives: <weights_dir>/<eval id, made a safe file name>.pt."""
    return os.path.join(weights_dir, (re.sub(r"[^A-Za-z0-9._-]", "_", eval_id) or "candidate") + ".pt")


def one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
