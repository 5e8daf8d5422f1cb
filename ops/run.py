"""`agentnas run TASK`: start the system, request a run, show its progress, stop when it ends."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import msgspec
import numpy as np
from rich.console import Console
from rich.text import Text

from agentnas.bus import messages as m
from agentnas.bus.config import Config
from agentnas.bus.space import SlottedSpace, save_space, space_size
from agentnas.bus.settings import RunSettings, TaskInfo
from agentnas.bus.publish import publish
from agentnas.ops.progress import follow
from agentnas.ops.result import chance_level, result_lines, write_result
from agentnas.ops.home import log_file
from agentnas.ops.up import run_system
from agentnas.store.state import RunState
from agentnas.trainer_daemon import recorded as recorded_mod
from agentnas.trainer_daemon.devices import default_concurrency, default_devices, parse_device
from agentnas.trainer_daemon.tasks import BUILTIN_TASKS, TaskData, load_task

SENDER = m.Sender(agent="cli")


def new_run_id(task_name: str) -> str:
    # run ids are ASCII letters, digits, _ and - (subjects.valid_run_id): "tâche" is "t-che"
    safe = "".join(c if c.isascii() and (c.isalnum() or c == "_") else "-" for c in task_name)[:24].strip("-") or "run"
    return f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def export_for_explorer(data: TaskData, folder: Path) -> str:
    """The explorer sees the training and validation splits as npy files (never the test split).

    Prompts name the files relative to $AGENTNAS_DATA, never by absolute path: a re-execution
    in another home must ask the LLM exactly what the original run asked."""
    folder.mkdir(parents=True, exist_ok=True)
    names = ("train_x", "train_y", "valid_x", "valid_y")
    for name in names:
        np.save(folder / f"{name}.npy", np.asarray(getattr(data, name)))
    return ", ".join(f"{name}.npy" for name in names) + " in the read-only folder named by the environment variable AGENTNAS_DATA"


def task_reference(task_ref: str) -> str:
    """A built-in task's name, or the absolute path of a task file (workers start elsewhere)."""
    if task_ref in BUILTIN_TASKS:
        return task_ref
    return str(Path(task_ref).expanduser().resolve())


def run_settings(config: Config, data: TaskData, task_ref: str, phases: tuple[int, ...], llm: str | None,
                 on_divergence: str, data_dir: Path, data_paths: str) -> RunSettings:
    """The run's typed settings, fixed in `run.requested` (no bus credentials, no home path)."""
    spec = data.spec
    task = TaskInfo(name=spec.name, description=spec.description, input_shape=tuple(spec.input_shape),
                    output_shape=tuple(spec.output_shape), loss=spec.loss, metric=spec.metric, blind=spec.blind,
                    published_best=spec.published_best)
    return RunSettings.from_config(config, task=task, task_ref=task_ref, phases=phases, llm_spec=llm or "",
                                   on_divergence=on_divergence, data_dir=str(data_dir), data_paths=data_paths)


def hand_over(home: Path, state: RunState, console: Console) -> None:
    """The end of a run on the screen: the result (its folder written first) or why it failed;
    the searched space, when there is one, as <home>/runs/<run>/space.json."""
    if state.space.accepted is not None:
        path = home / "runs" / state.run_id / "space.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_space(state.space.accepted.space, path)
        console.print(Text(f"slotted space: {path} ({len(state.space.accepted.space.slots)} slots, "
                           f"{state.space.accepted.size:,} configurations)", overflow="fold"), highlight=False)
    if state.result is not None and state.settings is not None:
        folder = write_result(home, state.run_id, state.result, state.settings.task)
        for line in result_lines(state.run_id, state.result, state.settings.task, folder,
                                 chance=chance_level(state.settings.task_ref)):
            console.print(Text(line, overflow="fold"), highlight=False)
    elif state.status == "failed":
        console.print(Text(f"run {state.run_id} failed: {state.failure}", overflow="fold"), highlight=False)


async def run_pipeline(config: Config, home: Path, config_path: str | None, task_ref: str, phases: tuple[int, ...],
                       llm: str | None, on_divergence: str, role_impls: dict[str, str] | str | None,
                       nats_url: str | None, console: Console, space: SlottedSpace | None = None,
                       space_notes: list[str] | None = None, run_id_out: list[str] | None = None,
                       recorded: tuple[str, list[tuple[str, m.EvaluationCompleted]]] = ("", [])) -> str:
    """Request a run and follow it to its end. `space`: the space Phase 3 searches in a run of
    Phase 3 alone (`agentnas search`), accepted as given. `recorded`: a recorded run and its
    evaluation results (ops/recorded.py), served to this re-execution instead of training again."""
    data = load_task(task_ref)
    run_id = new_run_id(data.spec.name)
    if not config.phase1.n_parallel:
        # "as many proposals as free trainer slots": the slots this command starts, fixed in the
        # run's configuration so that a re-execution asks the planner for the same number
        slots = sum(config.trainer.concurrency or default_concurrency(parse_device(d))
                    for d in config.trainer.devices or default_devices())
        config = msgspec.structs.replace(config, phase1=msgspec.structs.replace(config.phase1, n_parallel=slots))
    data_dir = home / "data" / run_id
    data_paths = export_for_explorer(data, data_dir)
    task_ref = task_reference(task_ref)
    if isinstance(role_impls, str):  # a planner's module:Class
        role_impls = {"planner": role_impls}
    settings = run_settings(config, data, task_ref, phases, llm, on_divergence, data_dir, data_paths)
    settings = msgspec.structs.replace(settings, roles=dict(role_impls or {}))
    payload = m.RunRequested(task=task_ref, phases=phases, settings=settings)
    outcome = {"status": "interrupted"}

    async def body(js, stop: asyncio.Event) -> None:
        source_run, results = recorded
        if results:  # before the run is requested: its first evaluation may already be one of them
            await recorded_mod.load(js, run_id, results)
            console.print(Text(f"re-executing {source_run}: {len(results)} recorded evaluation results are served "
                               "to identical requests instead of training them again (--retrain trains them)",
                               overflow="fold"), highlight=False)
        await publish(js, m.make_event(payload, run_id=run_id, sender=SENDER))
        await publish(js, m.make_event(m.RunStarted(), run_id=run_id, sender=SENDER))
        if space is not None:
            await publish(js, m.make_event(m.SpaceAccepted(plan=0, space=space, notes=list(space_notes or []),
                                                           size=space_size(space)), run_id=run_id, sender=SENDER))
        console.print(Text(f"run {run_id}: task {data.spec.name}, phases {', '.join(map(str, phases))}"
                           + ("" if not role_impls else " (no LLM: rule-based roles)")
                           + f"; `agentnas --home {home} events {run_id} -f` shows every event", overflow="fold"),
                      highlight=False)
        state = await follow(log_file(home), run_id, home, console, stop)
        outcome["status"] = state.status if state.ended else "interrupted"
        outcome["state"] = state

    await run_system(config, home, config_path, nats_url, console, body)
    if run_id_out is not None:
        run_id_out.append(run_id)
    return _closing(home, run_id, outcome, console)


def _closing(home: Path, run_id: str, outcome: dict, console: Console) -> str:
    if "state" in outcome:
        hand_over(home, outcome["state"], console)
    if outcome["status"] == "interrupted":
        console.print(Text(f"run {run_id} interrupted; continue it with `agentnas --home {home} run --resume {run_id}`",
                           overflow="fold"), highlight=False)
    console.print(Text(f"`agentnas --home {home} status {run_id}` shows the run's state, "
                       f"`agentnas --home {home} report {run_id}` writes its report", overflow="fold"), highlight=False)
    return outcome["status"]


async def resume_pipeline(config: Config, home: Path, config_path: str | None, run_id: str, nats_url: str | None,
                          console: Console, *, verbose: bool = False) -> str:
    """Start the system again for a run whose processes all stopped; it carries on from its log."""
    from agentnas.store.log import EventLog, LogError

    try:
        with EventLog(log_file(home), readonly=True) as log:
            if not log.run_exists(run_id):
                raise ResumeError(f"run '{run_id}' does not exist in {log.path} (see `agentnas runs`)")
            state = log.run_state(run_id)
    except LogError as exc:
        raise ResumeError(str(exc)) from None
    if state.ended:
        raise ResumeError(f"run '{run_id}' has already {state.status}; nothing to continue")
    if not state.requested:
        raise ResumeError(f"'{run_id}' is not a run that was requested")
    outcome: dict = {"status": "interrupted"}

    async def body(js, stop: asyncio.Event) -> None:
        console.print(Text(f"continuing run {run_id} from its log", overflow="fold"), highlight=False)
        state = await follow(log_file(home), run_id, home, console, stop)
        outcome["status"] = state.status if state.ended else "interrupted"
        outcome["state"] = state

    await run_system(config, home, config_path, nats_url, console, body)
    return _closing(home, run_id, outcome, console)


class ResumeError(ValueError):
    """A run that cannot be continued (one line)."""
