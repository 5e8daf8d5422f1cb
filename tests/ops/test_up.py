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


def nats_pid(home):
    (ports,) = (home / "nats" / "ports").glob("*.ports") or [None]
    return int(ports.stem.rsplit("_", 1)[1]) if ports else None


async def test_the_embedded_nats_server_is_supervised(tmp_path):
    """kill -9 of the embedded nats-server: restarted on the same port, services reconnect, events say so."""
    home = tmp_path / "home"
    up = subprocess.Popen(agentnas_cmd("--home", str(home), "up"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
    log = home / "events.sqlite"
    try:
        await wait_until(lambda: [p for k, p in kinds_of(log) if k == "agent.started" and p["role"] == "recorder"],
                         timeout=60, what="recorder started")
        url = json.loads((home / "bus.json").read_text())["url"]
        first = await wait_until(lambda: nats_pid(home), what="ports file")
        os.kill(first, signal.SIGKILL)
        restarted = await wait_until(
            lambda: [p for k, p in kinds_of(log) if k == "service.restarted" and p["service"] == "nats-server"],
            timeout=60, what="nats-server restarted")
        assert restarted[0]["pid"] != first and json.loads((home / "bus.json").read_text())["url"] == url
        # the recorder reconnected: a new event still reaches the log
        before = len(kinds_of(log))
        subprocess.run(agentnas_cmd("--home", str(home), "events", "_system"), capture_output=True, timeout=30)
        await wait_until(lambda: len(kinds_of(log)) > before, timeout=40, what="events after the restart")
    finally:
        up.send_signal(signal.SIGINT)
        out, err = up.communicate(timeout=30)
    assert up.returncode == 0, err
    assert "nats-server" in out


def test_a_stale_bus_file_is_an_unclean_shutdown_and_a_live_one_refuses_a_second_up(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (home / "bus.json").write_text(json.dumps({"url": "nats://127.0.0.1:1", "pid": dead.pid, "since": 1.0}))
    result = subprocess.run(agentnas_cmd("--home", str(home), "up", "--for", "3"), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "did not stop cleanly" in " ".join(result.stdout.split())
    (unclean,) = [p for k, p in kinds_of(home / "events.sqlite") if k == "system.unclean_shutdown"]
    assert unclean["pid"] == dead.pid and not (home / "bus.json").exists()
    # a live `up` on the same home: a second one is refused with one line
    (home / "bus.json").write_text(json.dumps({"url": "nats://127.0.0.1:1", "pid": os.getpid(), "since": 1.0}))
    second = subprocess.run(agentnas_cmd("--home", str(home), "up", "--for", "1"), capture_output=True, text=True,
                            timeout=60)
    assert second.returncode == 2 and "already running" in second.stderr and "Traceback" not in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
