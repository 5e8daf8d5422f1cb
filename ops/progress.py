"""Following a run on the terminal: notable events as lines, and a live status below them.

The status (phase, budget, patience, best metric, each running evaluation's epoch and
latest validation metric, an estimate of the time left, tokens and cost, any fault of the
machinery that holds the run, and how long ago each service was last heard of) is rebuilt
from the run's folded state (store/state), the local health reports (bus/health.py) and the
services' heartbeats (the `_system` run); a running service silent for `SILENT_S` is a
fault. On a terminal it is a live region; elsewhere the same text is printed as a line when
it changes, at most every `quiet_s` seconds.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from agentnas.bus import messages as m
from agentnas.bus import subjects
from agentnas.bus.health import faults
from agentnas.ops.describe import describe, metric
from agentnas.store.log import EventLog, LogError, row_to_envelope
from agentnas.store.state import RunState, fold

SHOWN = (m.PhaseStarted, m.ExplorationRequested, m.ExplorationReported, m.ExperimentProposed,
         m.ArchitectureRejected, m.EvaluationCompleted, m.BatchSummarized, m.PhaseStopped, m.SeedSelected,
         m.AgentOutputRejected, m.RunFailed, m.ModularizerFinished, m.SlotPlanProposed, m.AlternativeDropped,
         m.SpaceAccepted, m.SpaceRejected, m.ConfigurationsProposed, m.EvaluationInterrupted)


def notable(env: m.Envelope) -> bool:
    """Validations are the Code Executor's inner loop; their outcome shows in what follows."""
    if isinstance(env.payload, m.EvaluationCompleted) and (env.payload.request == "validate"
                                                            or env.payload.arch_id.startswith("plan")):
        return False  # Phase 2's validations too: their outcome shows as implemented or dropped
    return isinstance(env.payload, SHOWN)


SILENT_S = 60.0  # four missed heartbeats (every 15 s): the service is stuck or gone


def services_heard(system: RunState, now: float) -> list[tuple[str, float]]:
    """(role, seconds since last heard) of the newest instance of each running service."""
    latest: dict[str, float] = {}
    for agent in system.agents.values():
        if agent.status == "running":
            latest[agent.role] = max(latest.get(agent.role, 0.0), agent.last_seen)
    return sorted((role, now - seen) for role, seen in latest.items())


def _stage_name(stage: str) -> str:
    return {"final": "final training", "": "starting"}.get(stage, f"phase {stage}")


def status_lines(state: RunState, now: float, fault_lines: list[str],
                 heard: list[tuple[str, float]] | None = None) -> list[str]:
    """The live status, a few short lines (each fits 80 columns)."""
    stage = state.costs.current
    parts = [_stage_name(stage)]
    if state.settings is not None and stage == "1":
        p1, s1 = state.phase1, state.settings.phase1
        parts += [f"budget {p1.budget_used}/{s1.budget}", f"patience {p1.since_improvement}/{s1.patience}",
                  f"best {metric(p1.best_proxy)}"]
    elif state.settings is not None and stage == "3":
        found, s3 = state.search, state.settings.evolution
        parts += [s3.algorithm, f"budget {found.budget_used}/{s3.budget}",
                  f"patience {found.since_improvement}/{s3.patience}", f"best {metric(found.best)}"]
    elif stage == "2" and state.space.plan is not None:
        plan = state.space.plan.space
        total = sum(len(slot.alternatives) - 1 for slot in plan.slots)
        done = len(state.space.implemented) + len(state.space.dropped)
        parts.append(f"alternatives {done}/{total} checked")
    llm = state.llm
    if llm.calls:
        parts.append(f"LLM {(llm.input_tokens + llm.output_tokens) / 1000:.1f}k tokens ${llm.cost_usd:.2f}")
    left = time_left(state, now)
    if left is not None:
        parts.append(f"~{_duration(left)} left")
    lines = [" | ".join(parts)]
    for record in sorted(state.evals.in_flight, key=lambda r: r.eval_id):
        where = f"epoch {record.epoch}/{record.epochs}" if record.epochs else "starting"
        lines.append(f"  {record.arch_id or record.eval_id} {record.request}: {where}, "
                     f"val {metric(record.progress_metric)}")
    queued = len(state.evals.queued)
    if queued:
        lines.append(f"  {queued} evaluation{'s' if queued > 1 else ''} waiting for a trainer")
    lines += [f"  paused: {line}" for line in fault_lines]
    if heard:
        lines.append("  heard " + ", ".join(f"{role} {age:.0f}s" for role, age in heard) + " ago")
    return lines


def time_left(state: RunState, now: float) -> float | None:
    """A rough estimate for the current stage: the pace of its finished evaluations so far."""
    settings, stage = state.settings, state.costs.current
    if settings is None:
        return None
    if stage in ("1", "3"):
        phase = int(stage)
        done = [r for r in state.evals.records.values() if r.request == "proxy" and r.done and r.phase == phase]
        left = (settings.phase1.budget - state.phase1.budget_used if phase == 1
                else settings.evolution.budget - state.search.budget_used)
        if done and left > 0:
            elapsed = now - state.costs.since
            return elapsed / len(done) * left
        return None
    running = [r for r in state.evals.in_flight if r.epochs and r.epoch and r.started_at]
    if running:  # full training: the slowest running evaluation's remaining epochs at its pace
        return max((now - r.started_at) / r.epoch * (r.epochs - r.epoch) for r in running)
    return None


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Follower:
    """Reads a run's new events from the log, prints the notable ones, keeps the folded state."""

    def __init__(self, path: Path, run_id: str, home: Path, console: Console, *, quiet_s: float = 15.0,
                 prefix: str = "") -> None:
        self.path, self.run_id, self.home, self.console = path, run_id, home, console
        self.prefix = prefix
        self.state = RunState(run_id=run_id)
        self.after = 0
        self.quiet_s = quiet_s
        self.faults: list[str] = []
        self.last_plain = ("", 0.0)
        self.system = RunState(run_id=subjects.SYSTEM_RUN)  # the services' heartbeats
        self.system_after = 0

    def poll(self) -> bool:
        """Fold what is new; True if something was read."""
        try:
            with EventLog(self.path, readonly=True) as log:
                rows = log.rows(self.run_id, after_seq=self.after, limit=1000)
        except LogError:
            return False
        for row in rows:
            self.after = row.seq
            env = row_to_envelope(row)
            self.state = fold(self.state, env)
            if notable(env):
                stamp = time.strftime("%H:%M:%S", time.localtime(env.time))
                self.console.print(Text(f"{self.prefix}{stamp} {describe(env)}", overflow="fold"), highlight=False)
        return bool(rows)

    def poll_system(self) -> None:
        try:
            with EventLog(self.path, readonly=True) as log:
                rows = log.rows(subjects.SYSTEM_RUN, after_seq=self.system_after, limit=5000)
        except LogError:
            return
        for row in rows:
            self.system_after = row.seq
            self.system = fold(self.system, row_to_envelope(row))

    def check_faults(self) -> None:
        self.poll_system()
        now = [f"{r.service}: {r.fault} (since {time.strftime('%H:%M:%S', time.localtime(r.since))})"
               for r in faults(self.home)]
        at = time.time()  # the line names when it was last heard, so it stays the same while silent
        now += [f"{role}: not heard from since {time.strftime('%H:%M:%S', time.localtime(at - age))} "
                f"(no heartbeat for over {SILENT_S:.0f} s)"
                for role, age in services_heard(self.system, at) if age >= SILENT_S]
        for line in now:
            if line not in self.faults:
                self.console.print(Text(f"{time.strftime('%H:%M:%S')} paused: {line}", overflow="fold"),
                                   highlight=False)
        if self.faults and not now:
            self.console.print(f"{time.strftime('%H:%M:%S')} the fault cleared; carrying on", highlight=False)
        self.faults = now

    def render(self) -> Group:
        now = time.time()
        return Group(*(Text(line, overflow="ellipsis", no_wrap=True)
                       for line in status_lines(self.state, now, self.faults, services_heard(self.system, now))))

    def print_plain(self) -> None:
        """Off a terminal: the status's first line, when it changed, at most every `quiet_s`."""
        line = status_lines(self.state, time.time(), self.faults)[0]
        text, at = self.last_plain
        if line != text and time.monotonic() - at >= self.quiet_s:
            self.console.print(Text(f"{self.prefix}{time.strftime('%H:%M:%S')} {line}", overflow="fold"),
                               highlight=False)
            self.last_plain = (line, time.monotonic())

    @property
    def ended(self) -> bool:
        return self.state.ended


async def follow(path: Path, run_id: str, home: Path, console: Console, stop: asyncio.Event) -> RunState:
    """Follow the run until it ends (or `stop`); returns its state as last folded."""
    follower = Follower(path, run_id, home, console)
    live = Live(follower.render(), console=console, refresh_per_second=2, transient=True) \
        if console.is_terminal else None
    if live is not None:
        live.start()
    try:
        checked = 0.0
        while not stop.is_set() and not follower.ended:
            read = follower.poll()
            if time.monotonic() - checked > 2.0:
                follower.check_faults()
                checked = time.monotonic()
            if live is not None:
                live.update(follower.render())
            else:
                follower.print_plain()
            if not read:
                await asyncio.sleep(0.3)
        follower.poll()
    finally:
        if live is not None:
            live.stop()
    return follower.state
