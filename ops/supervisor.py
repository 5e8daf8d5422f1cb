"""Process supervision for `agentnas up`: start services as children, restart crashed ones.

A crashed child is restarted with exponential backoff (reset once it has stayed up for a
while) and both facts are events (`service.exited`, `service.restarted`) in the `_system`
run. Stopping sends SIGTERM to every child, waits, then SIGKILLs whatever is left.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
import structlog

from agentnas.bus import messages

log = structlog.get_logger("agentnas.supervisor")

Notify = Callable[[messages.Kind], Awaitable[None]]


class ServiceSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    argv: list[str]
    env: dict[str, str] = {}


class ServiceState(msgspec.Struct, kw_only=True):
    name: str
    pid: int = 0
    status: str = "starting"  # running | backoff | stopped
    restarts: int = 0
    started_at: float = 0.0


class Supervisor:
    def __init__(
        self,
        specs: list[ServiceSpec],
        logs_dir: Path,
        notify: Notify,
        *,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        stable_after_s: float = 60.0,
        stop_timeout_s: float = 5.0,
    ) -> None:
        self.specs = specs
        self.logs_dir = Path(logs_dir)
        self.notify = notify
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.stable_after_s = stable_after_s
        self.stop_timeout_s = stop_timeout_s
        self.states = {s.name: ServiceState(name=s.name) for s in specs}
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._tasks: list[asyncio.Task] = []
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        for spec in self.specs:
            await self._spawn(spec)
            self._tasks.append(asyncio.create_task(self._watch(spec), name=f"watch-{spec.name}"))

    async def _spawn(self, spec: ServiceSpec) -> None:
        out = open(self.logs_dir / f"{spec.name}.log", "ab")
        try:
            proc = await asyncio.create_subprocess_exec(
                *spec.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, **spec.env},
                start_new_session=True,  # a terminal's Ctrl-C reaches only us; we stop children in order
            )
        finally:
            out.close()
        self._procs[spec.name] = proc
        state = self.states[spec.name]
        state.pid, state.status, state.started_at = proc.pid, "running", time.monotonic()
        log.info("service started", service=spec.name, pid=proc.pid)

    async def _watch(self, spec: ServiceSpec) -> None:
        backoff = self.backoff_initial_s
        while True:
            proc = self._procs[spec.name]
            code = await proc.wait()
            if self._stopping.is_set():
                return
            state = self.states[spec.name]
            uptime = time.monotonic() - state.started_at
            if uptime >= self.stable_after_s:
                backoff = self.backoff_initial_s
            state.status = "backoff"
            log.warning("service exited", service=spec.name, pid=proc.pid, returncode=code)
            await self._tell(
                messages.ServiceExited(
                    service=spec.name, pid=proc.pid, returncode=code, uptime_s=round(uptime, 3)
                )
            )
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=backoff)
                return  # asked to stop while backing off
            except asyncio.TimeoutError:
                pass
            await self._spawn(spec)
            state.restarts += 1
            await self._tell(
                messages.ServiceRestarted(
                    service=spec.name, pid=state.pid, attempt=state.restarts, backoff_s=backoff
                )
            )
            backoff = min(backoff * 2, self.backoff_max_s)

    async def _tell(self, payload: messages.Kind) -> None:
        try:
            await self.notify(payload)
        except Exception as exc:  # the bus may be down too; the log file still has it
            log.warning("could not publish supervisor event", kind=messages.tag_of(payload), error=str(exc))

    async def stop(self) -> None:
        self._stopping.set()
        for proc in self._procs.values():
            if proc.returncode is None:
                _signal_group(proc.pid, signal.SIGTERM)
        waits = [p.wait() for p in self._procs.values() if p.returncode is None]
        if waits:
            done, pending = await asyncio.wait(
                [asyncio.ensure_future(w) for w in waits], timeout=self.stop_timeout_s
            )
            if pending:
                for name, proc in self._procs.items():
                    if proc.returncode is None:
                        log.warning("service did not stop in time; killing", service=name)
                        _signal_group(proc.pid, signal.SIGKILL)
                await asyncio.wait(pending, timeout=self.stop_timeout_s)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for state in self.states.values():
            state.status = "stopped"


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the child leads its own group (start_new_session)
    except ProcessLookupError:
        pass


def sender() -> messages.Sender:
    return messages.Sender(agent="supervisor", instance=f"{socket.gethostname()}:{os.getpid()}")
