"""The nats-server that `agentnas up` starts, supervised like every other service.

- Killed or crashed: restarted on the same port with the same JetStream store (after a
  backoff), so every client reconnects by itself and nothing on disk is lost; the
  `_system` log gets `service.exited` / `service.restarted` once the bus is back.
- Wedged: after a full disk, JetStream may turn itself off and stay off once space
  returns. If the server runs but JetStream has answered nothing for `wedged_after_s` while
  the store's disk has room again, the server is restarted.
Meanwhile the fault is reported in `<home>/health/nats-server.json`, which `run` and
`status` show.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from agentnas.bus import messages, subjects
from agentnas.bus.health import Health
from agentnas.bus.publish import publish
from agentnas.bus.server import NatsServer
from agentnas.ops.supervisor import sender

log = structlog.get_logger("agentnas.bus")

MIN_FREE_MB = 64.0  # room the store needs before a restart can help


class EmbeddedBus:
    def __init__(self, root: Path, *, binary: str | None, health: Health,
                 notify: Callable[[messages.Kind], Awaitable[None]] | None = None,
                 wedged_after_s: float = 30.0, check_every_s: float = 1.0) -> None:
        self.server = NatsServer(root, binary=binary)
        self.root = Path(root)
        self.health = health
        self.notify = notify
        self.wedged_after_s = wedged_after_s
        self.check_every_s = check_every_s
        self.restarts = 0
        self.status = "starting"
        self.url = ""

    @property
    def pid(self) -> int:
        return self.server.proc.pid if self.server.proc is not None else 0

    def start(self) -> str:
        self.url = self.server.start()
        self.server.port = int(self.url.rsplit(":", 1)[1])  # restarts keep the port: clients reconnect
        self.status = "running"
        return self.url

    def stop(self) -> None:
        self.server.stop()
        self.status = "stopped"

    async def watch(self, js, stop: asyncio.Event) -> None:
        """Until `stop`: restart the server when it is gone or JetStream stays wedged."""
        backoff = 0.5
        failing_since: float | None = None
        next_probe = 0.0
        while not stop.is_set():
            await asyncio.sleep(self.check_every_s)
            proc = self.server.proc
            if proc is not None and proc.poll() is not None:
                code = proc.returncode
                self.status = "backoff"
                self.health.fault(f"embedded nats-server exited with code {code}; restarting it")
                log.warning("nats-server exited; restarting", returncode=code, backoff_s=backoff)
                await asyncio.sleep(backoff)
                await self._restart(f"exited with code {code}", code)
                backoff = min(backoff * 2, 30.0)
                failing_since = None
                continue
            if time.monotonic() < next_probe:
                continue
            next_probe = time.monotonic() + 5.0
            reason = await self._probe(js)
            if not reason:
                failing_since = None
                backoff = 0.5
                if self.status == "running":
                    self.health.clear()
                continue
            failing_since = failing_since or time.monotonic()
            free = _free_mb(self.root)
            short = f"; it restarts once {MIN_FREE_MB:.0f} MB are free there" if free < MIN_FREE_MB else ""
            self.health.fault(f"JetStream not answering ({reason}); {free:.0f} MB free in {self.root}{short}")
            if time.monotonic() - failing_since >= self.wedged_after_s and free >= MIN_FREE_MB:
                log.warning("JetStream wedged; restarting nats-server", reason=reason)
                self.server.stop()
                await self._restart(f"JetStream wedged: {reason}", 0)
                failing_since = None

    async def _probe(self, js) -> str:
        """'' when JetStream stores a message; else why not.

        The probe is a real write where events go (a supervisor heartbeat in the `_system`
        run): after a full disk the server may answer its API while every write to a stream's
        block still fails."""
        nc = getattr(js, "_nc", None)
        if nc is not None and not nc.is_connected:
            return "" if self.server.proc is not None and self.server.proc.poll() is None else "server down"
        beat = messages.make_event(messages.AgentHeartbeat(role="supervisor", detail="bus probe"),
                                   run_id=subjects.SYSTEM_RUN, sender=sender())
        try:
            await publish(js, beat, timeout=3.0)
            return ""
        except Exception as exc:
            return str(exc) or type(exc).__name__

    async def _restart(self, why: str, code: int) -> None:
        try:
            await asyncio.to_thread(self.server.start)
        except Exception as exc:  # the port may still be held for a moment; the next check retries
            log.warning("nats-server restart failed", error=str(exc))
            return
        self.restarts += 1
        self.status = "running"
        self.health.clear()
        log.info("nats-server restarted", why=why, pid=self.pid, attempt=self.restarts)
        if self.notify is not None:
            await self._tell(messages.ServiceExited(service="nats-server", pid=0, returncode=code, uptime_s=0.0))
            await self._tell(messages.ServiceRestarted(service="nats-server", pid=self.pid, attempt=self.restarts,
                                                       backoff_s=0.0))

    async def _tell(self, payload: messages.Kind) -> None:
        for _ in range(30):  # the clients reconnect within a few seconds of the restart
            try:
                await self.notify(payload)
                return
            except Exception:
                await asyncio.sleep(1.0)


def _free_mb(folder: Path) -> float:
    try:
        return shutil.disk_usage(folder).free / 2**20
    except OSError:
        return 0.0
