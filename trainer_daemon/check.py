"""`agentnas check-model`: one `validate` evaluation of a model file, run locally in the sandbox."""

from __future__ import annotations

from pathlib import Path

from agentnas.trainer_daemon.gate import check_source
from agentnas.trainer_daemon.harness import Job, JobResult
from agentnas.trainer_daemon.sandbox import Limits, WorkerPool


async def check_model_file(source: str, task: str, *, device: str, memory_mb: float, scratch_root: Path) -> JobResult:
    problems = check_source(source)
    if problems:
        return JobResult(status="rejected", reason="; ".join(problems))
    limits = Limits(memory_mb=memory_mb, cpu_s=300.0, wall_s=600.0)
    async with WorkerPool(task, device, spares=1, limits=limits, scratch_root=scratch_root) as pool:
        return await pool.run(Job(eval_id="check-model", request="validate", model_source=source,
                                  time_cap_s=120.0, memory_cap_mb=memory_mb), lambda p: None)
