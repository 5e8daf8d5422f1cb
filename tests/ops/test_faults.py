"""Faults of the machinery are never charged to a candidate (docs/ARCHITECTURE.md, "Faults").

Each test runs a short scripted Phase 1 run through the real services (the LLM is the local
scripted provider), breaks one piece of machinery at a chosen moment with a real `kill -9`
(or a full disk, or a bus kept down), and audits the log afterwards: the run finishes by
itself, the candidate's result is what it would have been, nothing is paid for twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import msgspec
import pytest

from agentnas.bus import messages as m
from agentnas.bus.connect import close, connect
from agentnas.bus.server import NatsServer
from agentnas.ops.scripted_llm import scripted_llm
from tests.conftest import REPO, agentnas_cmd

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]
DEMO = json.loads((REPO / "ops/demo_transcript.json").read_text())
RECIPE = '{"optimizer": "adamw", "lr": 0.003, "weight_decay": 0.0001, "scheduler": "cosine", "epochs": 4, "batch_size": 128}'
LONGER = RECIPE.replace('"epochs": 4', '"epochs": 10')


def script(delay_planner_s: float = 0.0, epochs_recipe: str = LONGER) -> list[dict]:
    """Phase 1 only: one proposal and its code (the budget of one evaluation then stops the phase).
    The recipe is longer than the demo's so that a fault can land while the proxy trains."""
    first, code = (dict(rule) for rule in DEMO[:2])
    first["reply"] = first["reply"].replace(RECIPE, epochs_recipe)
    code["reply"] = code["reply"].replace(RECIPE, epochs_recipe)
    if delay_planner_s:
        first["delay_s"] = delay_planner_s
    return [first, code]


def rows(home: Path, run_id: str | None = None) -> list[tuple[str, str, dict]]:
    try:
        conn = sqlite3.connect(home / "events.sqlite")
        found = conn.execute("SELECT run_id, kind, payload FROM events" + (" WHERE run_id = ?" if run_id else "")
                             + " ORDER BY seq", (run_id,) if run_id else ()).fetchall()
        conn.close()
    except sqlite3.OperationalError:
        return []
    return [(r, k, json.loads(p)) for r, k, p in found]


def the_run(home: Path) -> str:
    (run_id,) = {r for r, k, _ in rows(home) if k == "run.requested"}
    return run_id


def wait_for(home: Path, predicate, proc=None, timeout: float = 300.0, what: str = "event"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate(rows(home))
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {proc.stdout.read()[-2000:]}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def proxy_progress(found):
    return [p for _, k, p in found if k == "evaluation.progress" and p["eval_id"].endswith("-proxy")]


def start_run(home: Path, server, *extra: str, config_extra: str = "", env: dict | None = None) -> subprocess.Popen:
    home.mkdir(parents=True, exist_ok=True)
    config = home / "agentnas.toml"
    config.write_text(
        "[llm]\nprovider = 'anthropic'\nmodel = 'claude-sonnet-4-6'\n"
        f"base_url = '{server.base_url}'\nmax_retries = 1\n"
        "[phase1]\nbudget = 1\nn_parallel = 1\ncode_retries = 1\ntop_k_full = 1\n"
        "[trainer]\nconcurrency = 1\n" + config_extra)
    return subprocess.Popen(agentnas_cmd("--home", str(home), "--config", str(config), "run", "addigits",
                                         "--phases", "1", "--llm", "anthropic", *extra),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "ANTHROPIC_API_KEY": "test-key", **(env or {})})


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # `run` stops its services; nothing outlives the test
        out, _ = proc.communicate(timeout=60)
        raise AssertionError(f"the run did not finish in {timeout:g} s: {out[-3000:]}") from None
    assert proc.returncode == 0, out[-4000:]
    return out


def audit_run(home: Path, run_id: str) -> dict:
    """Nothing paid twice, nothing lost, every evaluation ended once; the proxy's outcome."""
    found = rows(home, run_id)
    completed = [p["eval_id"] for _, k, p in found if k == "evaluation.completed"]
    requested = [p["eval_id"] for _, k, p in found if k == "evaluation.requested"]
    assert len(completed) == len(set(completed)) and set(completed) == set(requested)
    llm_requests = [p["call_id"] for _, k, p in found if k == "llm.requested"]
    assert len(llm_requests) == len(set(llm_requests)) == 2
    (proxy,) = [p for _, k, p in found if k == "evaluation.completed" and p["request"] == "proxy"]
    assert not any("dead-lettered" in p.get("reason", "") for _, k, p in found if k == "evaluation.completed")
    (done,) = [p for _, k, p in found if k == "run.finished"]
    return {"proxy": proxy, "result": done["result"], "events": found}


async def bucket_entry(home: Path, eval_id: str) -> dict:
    """The results bucket's entry, read from the embedded server's store after the run."""
    server = NatsServer(home / "nats")
    url = server.start()
    try:
        nc = await connect(url)
        kv = await nc.jetstream().key_value("eval_results")
        entry = msgspec.json.decode((await kv.get(eval_id)).value)
        await close(nc)
        return entry
    finally:
        server.stop()


async def test_nats_killed_mid_proxy(tmp_path):
    """kill -9 of the embedded nats-server while the proxy trains: `up` restarts it, the run
    finishes by itself, the proxy is `ok`, and the log and the results bucket agree."""
    home = tmp_path / "home"
    with scripted_llm(script(), key="test-key") as server:
        proc = start_run(home, server)
        wait_for(home, proxy_progress, proc, what="the proxy training")
        (ports,) = (home / "nats" / "ports").glob("*.ports")
        os.kill(int(ports.stem.rsplit("_", 1)[1]), signal.SIGKILL)
        out = finish(proc)
    audit = audit_run(home, the_run(home))
    assert audit["proxy"]["status"] == "ok" and audit["proxy"]["val_metric"] is not None
    entry = await bucket_entry(home, audit["proxy"]["eval_id"])
    assert entry["completed"]["status"] == "ok" and entry["completed"]["val_metric"] == audit["proxy"]["val_metric"]
    restarted = [p for _, k, p in rows(home, "_system") if k == "service.restarted" and p["service"] == "nats-server"]
    assert restarted and "result of" in out


async def test_nats_down_for_60_s_during_an_llm_turn(tmp_path):
    """An external bus that goes away for 60 s while the planner waits for its (slow) answer:
    the answer is recorded once the bus is back, the run finishes, no extra llm.requested."""
    home, store = tmp_path / "home", tmp_path / "bus"
    bus = NatsServer(store)
    url = bus.start()
    bus.port = int(url.rsplit(":", 1)[1])
    try:
        with scripted_llm(script(delay_planner_s=8.0), key="test-key") as server:
            proc = start_run(home, server, "--nats-url", url)
            wait_for(home, lambda found: [p for _, k, p in found if k == "llm.requested" and p["agent"] == "planner"],
                     proc, what="the planner's LLM call")
            bus.proc.kill()  # kill -9 while the provider is still answering
            bus.proc.wait()
            await asyncio.sleep(60)
            bus.start()
            out = finish(proc)
            assert server.errors == [] and len(server.calls()) == 2
    finally:
        bus.stop()
    audit = audit_run(home, the_run(home))
    assert audit["proxy"]["status"] == "ok" and "result of" in out
    assert not [p for _, k, p in audit["events"] if k == "run.failed"]


async def test_a_training_worker_killed_from_outside_is_retried(tmp_path):
    """kill -9 of the sandboxed worker training the proxy: an `evaluation.interrupted`, then the
    same evaluation again, `ok`, with the metric an undisturbed training of the same request gets."""
    home = tmp_path / "home"
    with scripted_llm(script(), key="test-key") as server:
        proc = start_run(home, server)
        wait_for(home, proxy_progress, proc, what="the proxy training")
        worker = _worker_of(home)
        os.kill(worker, signal.SIGKILL)
        finish(proc)
    audit = audit_run(home, the_run(home))
    interrupted = [p for _, k, p in audit["events"] if k == "evaluation.interrupted"]
    assert interrupted and "from outside" in interrupted[0]["reason"]
    assert audit["proxy"]["status"] == "ok" and audit["proxy"]["attempt"] == 2
    # the same request trained undisturbed (a fresh sandboxed pool, as a trainer runs it) gives the same metric
    from agentnas.trainer_daemon.daemon import job_for
    from agentnas.trainer_daemon.sandbox import Limits, WorkerPool

    (request,) = [p for _, k, p in audit["events"] if k == "evaluation.requested" and p["request"] == "proxy"]
    request = msgspec.convert(request, m.EvaluationRequested)
    threads = max(1, os.cpu_count() or 1)  # what the run's trainer (concurrency 1) gave its workers
    async with WorkerPool(request.task, "cpu", spares=1, limits=Limits(threads=threads, memory_mb=request.caps.memory_mb),
                          scratch_root=tmp_path / "scratch") as pool:
        clean = await pool.run(job_for(request, tmp_path / "weights"), lambda progress: None)
    assert clean.status == "ok" and clean.val_metric == audit["proxy"]["val_metric"]


def _worker_of(home: Path) -> int:
    """The pid of the process running the job now: the forked child of a CPU zygote (its cwd is a
    job folder inside the zygote's scratch folder)."""
    scratch = str((home / "scratch").resolve())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    cwd = os.readlink(f"/proc/{entry.name}/cwd")
                except OSError:
                    continue
                if cwd.startswith(scratch) and cwd.count("/job-") == 2:
                    return int(entry.name)
        time.sleep(0.1)
    raise AssertionError("no job process found")


def test_the_whole_tree_killed_then_resumed(tmp_path):
    """kill -9 of every process of the run while the proxy trains; `run --resume` finishes the
    run: nothing lost, nothing evaluated twice, no LLM call repeated."""
    home = tmp_path / "home"
    with scripted_llm(script(), key="test-key") as server:
        proc = start_run(home, server)
        wait_for(home, proxy_progress, proc, what="the proxy training")
        kill_everything(proc, home)
        time.sleep(1)
        run_id = the_run(home)
        status = subprocess.run(agentnas_cmd("--home", str(home), "status", run_id), capture_output=True, text=True,
                                timeout=60)
        assert "interrupted" in status.stdout and "--resume" in " ".join(status.stdout.split())
        resumed = subprocess.Popen(agentnas_cmd("--home", str(home), "--config", str(home / "agentnas.toml"), "run",
                                                "--resume", run_id),
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, "ANTHROPIC_API_KEY": "test-key"})
        out = finish(resumed)
        assert server.errors == [] and len(server.calls()) == 2
    assert "did not stop cleanly" in " ".join(out.split()) and "result of" in out
    audit_run(home, run_id)
    assert [k for _, k, _ in rows(home, "_system") if k == "system.unclean_shutdown"]


def kill_everything(proc: subprocess.Popen, home: Path) -> None:
    """kill -9 of the command (started in its own session) and every process it started for
    `home` (each service leads its own process group)."""
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in _descendants_of_home(home):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _descendants_of_home(home: Path) -> list[int]:
    """Every process started for this home (each service leads its own process group)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(home) in cmdline and int(entry.name) != os.getpid():
                found.append(int(entry.name))
    return found


def test_the_home_disk_filled_then_freed(tmp_path):
    """The home on a small tmpfs, filled while the proxy trains and freed 20 s later: the run
    finishes by itself, the proxy is `ok`, nothing is dead-lettered (JetStream wedged by the
    full disk is restarted by `up`)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400m", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        home = disk / "home"
        with scripted_llm(script(), key="test-key") as server:
            proc = start_run(home, server)
            wait_for(home, proxy_progress, proc, what="the proxy training")
            filler = disk / "filler"
            with open(filler, "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * 2**20)
                        f.flush()
                except OSError:
                    pass  # full
            time.sleep(20)
            filler.unlink()
            out = finish(proc, timeout=800)
        audit = audit_run(home, the_run(home))
        assert audit["proxy"]["status"] == "ok" and "result of" in out
    finally:
        subprocess.run(["umount", "-l", str(disk)])
