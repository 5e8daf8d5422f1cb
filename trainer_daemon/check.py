"""`agentnas check-model`: one `validate` evaluation of a model file, run locally in the sandbox."""

from __future__ import annotations

from pathlib import Path

from agentnas.bus.settings import ProxySettings
from agentnas.trainer_daemon.gate import check_source
from agentnas.trainer_daemon.job import WHOLE_JOB_GRACE_S, Job, JobResult
from agentnas.trainer_daemon.sandbox import Limits, WorkerPool

# what a run's agents send by default (the setting proxy.validate_time_cap_s)
VALIDATE_CAP_S = ProxySettings().validate_time_cap_s


async def check_model_file(source: str, task: str, *, device: str, memory_mb: float, scratch_root: Path,
                           validate_cap_s: float = VALIDATE_CAP_S) -> JobResult:
    """The static gate, then a validate job whose wall-clock cap covers all of it (build, probe ...)."""
    problems = check_source(source)
    if problems:
        return JobResult(status="rejected", reason="; ".join(problems))
    # the pool's own deadline backs the harness's cap up: a little later, and it always holds
    limits = Limits(memory_mb=memory_mb, cpu_s=max(300.0, 2 * validate_cap_s), wall_s=validate_cap_s + WHOLE_JOB_GRACE_S)
    async with WorkerPool(task, device, spares=1, limits=limits, scratch_root=scratch_root) as pool:
        return await pool.run(Job(eval_id="check-model", request="validate", model_source=source,
                                  time_cap_s=validate_cap_s, memory_cap_mb=memory_mb), lambda p: None)
