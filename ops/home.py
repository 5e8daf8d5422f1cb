"""The home folder: where a machine keeps its log, NATS store, service logs and weights.

    <home>/events.sqlite   the event log (system of record)
    <home>/nats/           the embedded nats-server's config, JetStream store and log
    <home>/logs/           one log file per supervised service
    <home>/weights/        trained weights, referenced by path from events
    <home>/scratch/        sandbox scratch folders (deleted after each job)
    <home>/bus.json        URL of the bus while `agentnas up` runs
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import msgspec

from agentnas.bus.health import process_alive
from agentnas.store.log import DEFAULT_NAME, EventLog


class HomeError(RuntimeError):
    pass


def prepare_home(home: Path) -> Path:
    """Create the home folder if needed and prove it is writable (one-line error otherwise)."""
    need_folder(home)
    try:
        home.mkdir(parents=True, exist_ok=True)
        probe = home / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise HomeError(f"home folder {home} is not writable ({exc.strerror})") from None
    return home


def need_folder(home: Path) -> None:
    """A home that exists must be a folder (a file there is a mistake in --home, not a missing log)."""
    if home.exists() and not home.is_dir():
        raise HomeError(f"home {home} is not a folder")


def log_file(home: Path) -> Path:
    return home / DEFAULT_NAME


def check_log(home: Path) -> None:
    """Open (creating or migrating) the home's event log, so that a corrupt, foreign or newer
    log stops `up` / `run` with one line before anything starts (the recorder would otherwise
    fail on it, be restarted, and fail again)."""
    with EventLog(log_file(home)):
        pass


class BusFile(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    pid: int
    since: float = 0.0


def write_bus_file(home: Path, url: str) -> None:
    (home / "bus.json").write_text(json.dumps({"url": url, "pid": os.getpid(), "since": time.time()}))


def read_bus_file(home: Path) -> BusFile | None:
    try:
        return msgspec.json.decode((home / "bus.json").read_bytes(), type=BusFile)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def system_up(home: Path) -> bool:
    """An `agentnas up` (or `run`) is running on this home now."""
    found = read_bus_file(home)
    return found is not None and process_alive(found.pid)


def previous_up(home: Path) -> BusFile | None:
    """The bus file an earlier `up` left behind when it was killed (None if it stopped cleanly).

    Refuses to start a second `up` on a home whose first one is still running."""
    found = read_bus_file(home)
    if found is None:
        return None
    if found.pid != os.getpid() and process_alive(found.pid):
        raise HomeError(f"agentnas is already running on {home} (pid {found.pid}, bus {found.url}); "
                        "stop it first, or pass --home for another one")
    return found


def read_bus_url(home: Path) -> str | None:
    try:
        data = json.loads((home / "bus.json").read_text())
    except (OSError, ValueError):
        return None
    return data.get("url")


def clear_bus_file(home: Path) -> None:
    (home / "bus.json").unlink(missing_ok=True)
