"""Faults of the machinery, as each service on this machine sees them, in small local files.

When the bus or the disk fails, events cannot say so (they travel on the bus and land on
the disk). So each service writes what it is waiting for to `<home>/health/<service>.json`
(one small file, replaced atomically; a failed write is ignored), and `run` and `status`
read the folder to show why a run is not moving ("paused") and when that started. Once
the fault clears the service says so and the line goes away.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import msgspec

FOLDER = "health"
STALE_S = 120.0  # a report older than this from a process that is gone is not shown


class Report(msgspec.Struct, frozen=True, kw_only=True):
    service: str
    pid: int
    fault: str = ""  # "" when healthy
    since: float = 0.0  # when the fault began
    updated: float = 0.0


class Health:
    """One service's reports. `fault()` repeats are cheap: the file changes only with the text."""

    def __init__(self, home: Path | None, service: str) -> None:
        self.path = Path(home) / FOLDER / f"{service}.json" if home is not None else None
        self.service = service
        self.current = ""
        self.since = 0.0

    def fault(self, text: str) -> None:
        if text != self.current:
            self.since = time.time() if not self.current else self.since
            self.current = text
            self._write()

    def clear(self) -> None:
        if self.current:
            self.current, self.since = "", 0.0
            self._write()

    def _write(self) -> None:
        if self.path is None:
            return
        report = Report(service=self.service, pid=os.getpid(), fault=self.current, since=self.since,
                        updated=time.time())
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(msgspec.json.encode(report))
            os.replace(tmp, self.path)
        except OSError:
            pass  # the disk may be the fault; the log line says it anyway


def faults(home: Path) -> list[Report]:
    """Current faults reported on this machine, oldest first."""
    found = []
    for path in sorted((Path(home) / FOLDER).glob("*.json")):
        try:
            report = msgspec.json.decode(path.read_bytes(), type=Report)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError, json.JSONDecodeError):
            continue
        alive = process_alive(report.pid)
        if report.fault and (alive or time.time() - report.updated < STALE_S):
            found.append(report)
    return sorted(found, key=lambda r: r.since)


def process_alive(pid: int) -> bool:
    """A process with this pid exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
