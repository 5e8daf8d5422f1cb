"""`agentnas up` end to end: embedded bus, supervised recorder, restart after kill -9, clean stop."""

import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest

from tests.conftest import agentnas_cmd, wait_until

pytestmark = pytest.mark.integration


def kinds_of(path, run_id="_system"):
    try:
        conn = sqlite3.connect(path)
        rows = conn.execute("SELECT kind, payload FROM events WHERE run_id = ? ORDER BY seq", (run_id,)).fetchall()
        conn.close()
    except sqlite3.OperationalError:
        return []
    return [(k, json.loads(p)) for k, p in rows]


async def test_kill_9_of_a_child_is_followed_by_a_restart_and_an_event(tmp_path):
    home = tmp_path / "home"
    up = subprocess.Popen(agentnas_cmd("--home", str(home), "up"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = home / "events.sqlite"
    try:
        started = await wait_until(
            lambda: [p for k, p in kinds_of(log) if k == "agent.started" and p["role"] == "recorder"],
            what="recorder started")
        first_pid = started[0]["pid"]
        os.kill(first_pid, signal.SIGKILL)
        restarted = await wait_until(
            lambda: [p for k, p in kinds_of(log) if k == "service.restarted"], what="restart event")
        assert restarted[0]["service"] == "recorder" and restarted[0]["attempt"] == 1
        exited = [p for k, p in kinds_of(log) if k == "service.exited"]
        assert exited[0]["pid"] == first_pid and exited[0]["returncode"] == -signal.SIGKILL
        second = [p for k, p in kinds_of(log) if k == "agent.started" and p["role"] == "recorder"]
        assert len(second) == 2 and second[1]["pid"] == restarted[0]["pid"] != first_pid
        assert json.loads((home / "bus.json").read_text())["url"].startswith("nats://127.0.0.1:")
    finally:
        t0 = time.monotonic()
        up.send_signal(signal.SIGINT)
        out, err = up.communicate(timeout=20)
    assert up.returncode == 0, err
    assert time.monotonic() - t0 < 8, "stopping took too long"
    assert "recorder" in out and "stopped" in out
    assert not (home / "bus.json").exists()
    # nothing left running: the recorder's pid is gone
    with pytest.raises(ProcessLookupError):
        os.kill(restarted[0]["pid"], 0)


def test_sigterm_stops_everything_cleanly(tmp_path):
    home = tmp_path / "home"
    up = subprocess.Popen(agentnas_cmd("--home", str(home), "up"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not [p for k, p in kinds_of(home / "events.sqlite") if k == "agent.started"]:
        time.sleep(0.1)
    t0 = time.monotonic()
    up.send_signal(signal.SIGTERM)
    out, _ = up.communicate(timeout=15)
    assert up.returncode == 0 and time.monotonic() - t0 < 8
    assert "stopped" in out
    started = [p for k, p in kinds_of(home / "events.sqlite") if k == "agent.started"]
    assert started and started[0]["role"] == "recorder"


def test_up_with_an_existing_server(nats_server, tmp_path):
    result = subprocess.run(agentnas_cmd("--home", str(tmp_path), "up", "--nats-url", nats_server.url, "--for", "2"),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "external" in result.stdout and nats_server.url in result.stdout
