"""Shared fixtures: one real nats-server per test run; fresh streams for each test that asks."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentnas.bus.connect import close, connect, ensure_streams
from agentnas.bus.server import NatsServer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory):
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def js(nats_server):
    """A JetStream context on the shared server, with EVENTS and EVAL created fresh."""
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    for name in ("EVAL", "EVENTS", "KV_eval_results"):
        try:
            await js.delete_stream(name)
        except Exception:
            pass
    await ensure_streams(js)
    yield js
    await close(nc)


@pytest.fixture
def processes():
    """Child processes a test starts; whatever is still running at teardown is killed."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def agentnas_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "agentnas.ops.cli", *args]


def run_cli(*args: str, env: dict | None = None, timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        agentnas_cmd(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


async def wait_until(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
