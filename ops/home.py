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
from pathlib import Path

from agentnas.store.log import DEFAULT_NAME


class HomeError(RuntimeError):
    pass


def prepare_home(home: Path) -> Path:
    """Create the home folder if needed and prove it is writable (one-line error otherwise)."""
    try:
        home.mkdir(parents=True, exist_ok=True)
        probe = home / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise HomeError(f"home folder {home} is not writable ({exc.strerror})") from None
    return home


def log_file(home: Path) -> Path:
    return home / DEFAULT_NAME


def write_bus_file(home: Path, url: str) -> None:
    (home / "bus.json").write_text(json.dumps({"url": url, "pid": os.getpid()}))


def read_bus_url(home: Path) -> str | None:
    try:
        data = json.loads((home / "bus.json").read_text())
    except (OSError, ValueError):
        return None
    return data.get("url")


def clear_bus_file(home: Path) -> None:
    (home / "bus.json").unlink(missing_ok=True)
