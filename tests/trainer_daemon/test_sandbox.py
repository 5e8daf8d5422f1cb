"""The sandboxed worker pool: real jobs run, and every hostile candidate is contained.

The runtime tests switch the static gate off on purpose (and, for the network
case, the audit hook too), so each remaining wall is shown to hold by itself.
They use the real harness on CPU and a tiny task file written here (shaped
like the built-in `addigits`: 3x8x8 inputs, 28 classes), which starts faster
than a built-in task.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path

import msgspec
import numpy as np
import pytest

from agentnas.sandbox.audit import make_audit_hook, strict_policy
from agentnas.trainer_daemon.harness import Job
from agentnas.trainer_daemon.sandbox import Limits, WorkerPool, child_env, wall_timeout_s
from tests.sandbox.helpers import HOSTILE, group_gone, header, os_gives_namespaces, snapshot

pytestmark = pytest.mark.timeout(180)

LIMITS = Limits(memory_mb=512, cpu_s=2, file_mb=8, nproc=32, wall_s=8, output_chars=4000, threads=1)
FAKE_KEY = "placeholder-secret-for-sandbox-tests"

SMALL_MODEL = '''
import torch
from torch import nn
import torch.nn.functional as F


class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Linear(16, 28)

    def forward(self, x):
        if self.training:
            x = x + 0.01 * torch.randn_like(x)
        return self.head(F.relu(self.conv(x)).mean(dim=(2, 3)))
'''


# ---------------------------------------------------------------- pure parts


def test_child_env_is_an_allow_list(tmp_path):
    parent = {
        "PATH": "/usr/bin", "LANG": "C.UTF-8", "PYTHONPATH": "/src", "HOME": "/root",
        "ANTHROPIC_API_KEY": FAKE_KEY, "OPENAI_API_KEY": "x", "AWS_SECRET_ACCESS_KEY": "x",
        "NATS_URL": "nats://secret", "GITHUB_TOKEN": "x", "DB_PASSWORD": "x", "SOMETHING_ELSE": "x",
        "CUDA_VISIBLE_DEVICES": "1",
    }
    env = child_env(parent, scratch=tmp_path, threads=3, device="cpu")
    assert env["PATH"] == "/usr/bin" and env["PYTHONPATH"] == "/src" and env["LANG"] == "C.UTF-8"
    assert env["HOME"] == env["TMPDIR"] == str(tmp_path)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"
    assert not {"ANTHROPIC_API_KEY", "OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "NATS_URL", "GITHUB_TOKEN",
                "DB_PASSWORD", "SOMETHING_ELSE", "CUDA_VISIBLE_DEVICES"} & set(env)
    assert FAKE_KEY not in str(env)
    assert child_env(parent, scratch=tmp_path, threads=1, device="cuda:0")["CUDA_VISIBLE_DEVICES"] == "1"


def test_wall_timeout_scales_with_the_cap_and_is_bounded():
    limits = Limits(wall_s=10_000.0)
    assert wall_timeout_s(limits, 100.0) == pytest.approx(100.0 * 2 + 300.0)
    assert wall_timeout_s(limits, 3600.0) == 3600.0 * 2 + 300.0
    assert wall_timeout_s(limits, 24 * 3600.0) == 10_000.0


def test_limits_refuse_unknown_fields():
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"memory_mb": 1, "disk_mb": 2}', type=Limits)


def test_pool_refuses_unknown_walls(tmp_path):
    with pytest.raises(ValueError, match="rlimits"):
        WorkerPool("tiny.toml", "cpu", spares=0, limits=LIMITS, scratch_root=tmp_path,
                   unsafe_disable=frozenset({"rlimits"}))


def test_audit_hook_decisions(tmp_path):
    """The hook as a plain function (installing it here would bind the test process for good)."""
    scratch, outside = tmp_path / "scratch", tmp_path / "outside"
    scratch.mkdir()
    outside.mkdir()
    (outside / "data.txt").write_text("x")
    hook = make_audit_hook(strict_policy((str(scratch),), (str(outside),)))
    hook("open", (str(scratch / "w.bin"), "wb", 0))
    hook("open", (str(outside / "data.txt"), "r", 0))
    hook("os.rename", (str(scratch / "a"), str(scratch / "b"), None, None))
    refused = [
        ("open", (str(outside / "data.txt"), "w", 0)),
        ("open", (str(outside / "new"), None, os.O_WRONLY | os.O_CREAT)),
        ("open", ("/etc/passwd", "r", 0)),
        ("open", (str(outside), "r", 0)),  # a directory
        ("open", (3, "wb", 0)),
        ("os.rename", (str(scratch / "a"), str(outside / "b"), None, None)),
        ("os.remove", (str(scratch / "a"), 5)),  # relative to some directory fd
        ("os.symlink", ("/etc/passwd", str(outside / "l"), None)),
        ("os.system", (b"id",)),
        ("subprocess.Popen", ("id", ["id"], None, None)),
        ("os.fork", ()),
        ("os.kill", (1, 0)),
        ("socket.connect", (None, ("1.1.1.1", 80))),
        ("ctypes.dlopen", ("libc.so.6",)),
        ("resource.setrlimit", (0, (1, 1))),
        ("os.listdir", ("/root",)),
    ]
    for event, args in refused:
        with pytest.raises(PermissionError, match="sandbox blocked"):
            hook(event, args)
    # a symlink inside the scratch folder does not lead out of it
    (scratch / "link").symlink_to(outside / "data.txt")
    with pytest.raises(PermissionError):
        hook("open", (str(scratch / "link"), "w", 0))


# ---------------------------------------------------------------- fixtures


class Dirs(msgspec.Struct, frozen=True, kw_only=True):
    root: Path
    scratch: Path
    outside: Path
    weights: Path
    task: str  # the task file


def _write_task(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    files = []
    for split, n in (("train", 256), ("valid", 64), ("test", 64)):
        np.save(folder / f"{split}_x.npy", rng.standard_normal((n, 3, 8, 8)).astype(np.float32))
        np.save(folder / f"{split}_y.npy", rng.integers(0, 28, n))
        files += [f'{split}_x = "{split}_x.npy"', f'{split}_y = "{split}_y.npy"']
    toml = folder / "tiny.toml"
    toml.write_text('name = "tiny"\ninput_shape = [3, 8, 8]\noutput_shape = [28]\nloss = "cross_entropy"\n'
                    'metric = "error_pct"\n[files]\n' + "\n".join(files) + "\n")
    return toml


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> Dirs:
    root = tmp_path_factory.mktemp("sandbox")
    made = Dirs(root=root, scratch=root / "scratch", outside=root / "outside", weights=root / "weights",
                task=str(_write_task(root / "task")))
    made.outside.mkdir()
    (made.outside / "sentinel.txt").write_text("untouched")
    return made


@pytest.fixture(scope="module")
def listener():
    """A TCP port in the test's own network namespace; no worker may ever reach it."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


@pytest.fixture(scope="module")
def secret_env():
    """A fake API key in the parent's environment, set before any worker starts."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANTHROPIC_API_KEY", FAKE_KEY)
        patch.setenv("AGENTNAS_TEST_TOKEN", FAKE_KEY)
        yield


@pytest.fixture(scope="module")
async def open_pool(dirs, secret_env):
    """Workers with the static gate switched off: only the runtime walls stand."""
    pool = WorkerPool(dirs.task, "cpu", spares=2, limits=LIMITS, scratch_root=dirs.scratch,
                      unsafe_disable=frozenset({"gate"}))
    await pool.start()
    yield pool
    await pool.close()


REUSE = 4  # jobs per reused worker in these tests: most jobs find walls a previous job closed


@pytest.fixture(scope="module")
async def open_pools(open_pool, dirs, secret_env):
    """Both kinds of open pool by mode: the fork server (the CPU default) and reused worker
    processes (the GPU default, run here on CPU)."""
    pool = WorkerPool(dirs.task, "cpu", spares=2, limits=LIMITS, scratch_root=dirs.scratch, fork=False,
                      jobs_per_worker=REUSE, unsafe_disable=frozenset({"gate"}))
    await pool.start()
    yield {"fork": open_pool, "reuse": pool}
    await pool.close()


def _worker_cwds(scratch_root: Path) -> list[int]:
    """Processes whose working directory lies under the scratch root: the pool's workers."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(scratch_root) in os.readlink(entry / "cwd"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _group(pgid: int) -> set[int]:
    """Processes in the process group `pgid`."""
    members = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                    members.add(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return members


async def _run_watched(pool: WorkerPool, job: Job) -> tuple[object, set[int], list[dict]]:
    seen: set[int] = set()
    progress: list[dict] = []

    async def watch() -> None:
        while True:
            seen.update(pool.running_pids)
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    try:
        result = await pool.run(job, progress.append)
    finally:
        watcher.cancel()
    return result, seen, progress


# ---------------------------------------------------------------- real jobs


async def test_proxy_job_reports_progress_and_saves_nothing_outside(dirs, secret_env):
    async with WorkerPool(dirs.task, "cpu", spares=1, limits=LIMITS, scratch_root=dirs.scratch) as pool:
        before = snapshot(dirs.root, dirs.scratch)
        progress: list[dict] = []

        async def on_progress(line: dict) -> None:  # an async callback is awaited
            progress.append(line)

        job = Job(eval_id="p1", request="final_wave1", model_source=SMALL_MODEL,
                  recipe={"epochs": 2, "batch_size": 128}, weights_dir=str(dirs.weights))
        result = await pool.run(job, on_progress)
        assert result.status == "ok", result
        assert [p["epoch"] for p in progress] == [1, 2]
        assert {"epoch", "epochs", "train_loss", "val_metric", "device_time_s"} <= set(progress[0])
        assert result.epochs_done == 2 and result.val_metric is not None
        # the result says so exactly when a wall is missing
        assert bool([w for w in result.warnings if w.startswith("sandbox:")]) != os_gives_namespaces()
        # the only new file anywhere outside scratch is the checkpoint, in weights_dir
        after = snapshot(dirs.root, dirs.scratch)
        assert set(after) - set(before) == {result.weights_path}
        assert Path(result.weights_path).parent == dirs.weights

        # a warm worker answers at once: the gate (in the worker) refuses this in well under a second
        await pool.start()  # waits until the replacement spare is ready
        warm = set(_worker_cwds(dirs.scratch))
        started = time.monotonic()
        result, pids, _ = await _run_watched(
            pool, Job(eval_id="p2", request="validate", model_source="import os\n" + SMALL_MODEL))
        assert time.monotonic() - started < 1.0
        # it ran in a child forked by the zygote that was warm before the job came; no new worker started
        assert pids and not pids & warm and set(_worker_cwds(dirs.scratch)) == warm
        assert result.status == "rejected" and "import of 'os'" in result.reason


async def test_a_worker_that_cannot_start_is_a_fault_of_the_machinery(dirs):
    """Nothing of the candidate ran: the daemon retries it (never charged to the candidate)."""
    async with WorkerPool("no-such-task", "cpu", spares=0, limits=LIMITS, scratch_root=dirs.scratch) as pool:
        result = await pool.run(Job(eval_id="s1", request="validate", model_source=SMALL_MODEL), print)
    assert result.fault and "worker failed to start" in result.fault and "no-such-task" in result.fault
    assert "TaskError" in result.traceback


# ---------------------------------------------------------------- the hostile corpus


TIMEOUT_CASES = ("infinite_forward", "sleep_forever")  # run side by side in test_timeouts_...


def _runtime_cases() -> list[Path]:
    return [p for p in sorted(HOSTILE.glob("*.py")) if "# runtime:" in p.read_text() and p.stem not in TIMEOUT_CASES]


def _check_env_not_leaked(result) -> None:
    text = result.reason + result.traceback
    assert "HOME=" in text  # the candidate did read its environment...
    assert FAKE_KEY not in text and "ANTHROPIC" not in text and "AGENTNAS_TEST_TOKEN" not in text  # ...minus secrets


EXTRA_CHECKS = {"env_read": _check_env_not_leaked}


@pytest.mark.parametrize("mode", ["fork", "reuse"])
@pytest.mark.parametrize("path", _runtime_cases(), ids=lambda p: p.stem)
async def test_hostile_candidate_is_contained(path, mode, dirs, listener, open_pools):
    text = path.read_text()
    statuses, _, expected = header(text, "runtime").partition("|")
    disabled = frozenset((header(text, "disable") or "gate").split(","))
    source = text.replace("OUTSIDE_DIR", str(dirs.outside)).replace("PARENT_PORT", str(listener.getsockname()[1]))
    if header(text, "needs") == "namespaces" and not os_gives_namespaces():
        pytest.skip("only network and mount namespaces stop this one, and this OS gives none")
    job = Job(eval_id=path.stem, request="validate", model_source=source)
    before = snapshot(dirs.root, dirs.scratch)

    if disabled == {"gate"}:
        result, pids, _ = await _run_watched(open_pools[mode], job)
    else:
        async with WorkerPool(dirs.task, "cpu", spares=0, limits=LIMITS, scratch_root=dirs.scratch,
                              unsafe_disable=disabled, fork=mode == "fork", jobs_per_worker=REUSE) as pool:
            result, pids, _ = await _run_watched(pool, job)

    assert result.status in {s.strip() for s in statuses.split(",")}, result
    assert expected.strip() in result.reason + result.traceback, result
    if path.stem in EXTRA_CHECKS:
        EXTRA_CHECKS[path.stem](result)
    # nothing written outside the scratch root, nothing reached the parent, nothing left running
    assert snapshot(dirs.root, dirs.scratch) == before
    assert sorted(p.name for p in dirs.outside.iterdir()) == ["sentinel.txt"]
    with pytest.raises(BlockingIOError):
        listener.accept()
    # nothing left running: a reused worker that passed its check may stay, alone in its group
    kept = set(_worker_cwds(dirs.scratch)) if mode == "reuse" else set()
    assert all(group_gone(pid) or (pid in kept and _group(pid) == {pid}) for pid in pids)
    cap = LIMITS.file_mb * 2**20
    assert not [p for p in dirs.scratch.rglob("*") if p.is_file() and p.stat().st_size > cap]


async def test_timeouts_kill_the_whole_process_group(dirs, open_pool):
    """Both clocks: CPU time (SIGXCPU) for a busy loop, wall clock for a sleeper."""
    busy = (HOSTILE / "infinite_forward.py").read_text()
    sleeper = (HOSTILE / "sleep_forever.py").read_text()
    started = time.monotonic()
    (busy_result, busy_pids, _), (sleep_result, sleep_pids, _) = await asyncio.gather(
        _run_watched(open_pool, Job(eval_id="busy", request="validate", model_source=busy)),
        _run_watched(open_pool, Job(eval_id="sleep", request="validate", model_source=sleeper)))
    assert busy_result.status == "timeout" and "CPU time limit" in busy_result.reason
    assert sleep_result.status == "timeout" and "wall-clock limit of 8 s" in sleep_result.reason
    assert time.monotonic() - started < LIMITS.wall_s + 10
    assert busy_pids and sleep_pids and all(group_gone(pid) for pid in busy_pids | sleep_pids)


async def test_worker_killed_from_outside_is_a_fault_of_the_machinery(open_pool):
    """SIGKILL from outside (an operator, the host's OOM killer) is not the candidate's doing: the
    result carries a fault, which the daemon retries instead of reporting."""
    sleeper = (HOSTILE / "sleep_forever.py").read_text()
    run = asyncio.create_task(open_pool.run(Job(eval_id="killed", request="validate", model_source=sleeper), print))
    while not open_pool.running_pids:
        await asyncio.sleep(0.02)
    pid = open_pool.running_pids[0]
    await asyncio.sleep(1.0)
    os.kill(pid, signal.SIGKILL)
    result = await run
    assert "SIGKILL from outside" in result.fault and result.reason == ""
    assert group_gone(pid)


async def test_close_kills_spares_and_removes_scratch(tmp_path, dirs):
    scratch = tmp_path / "scratch"
    pool = WorkerPool(dirs.task, "cpu", spares=2, limits=LIMITS, scratch_root=scratch)
    await pool.start()
    pids = _worker_cwds(scratch)
    assert len(pids) == 2
    await pool.close()
    assert _worker_cwds(scratch) == [] and all(group_gone(pid) for pid in pids)
    assert list(scratch.iterdir()) == []
    with pytest.raises(RuntimeError, match="closed"):
        await pool.run(Job(eval_id="late", request="validate", model_source=SMALL_MODEL), print)


# ---------------------------------------------------------------- fork server (the CPU default)


LEAVE_TRACES = '''
import os
import torch
from torch import nn


class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        torch.agentnas_trace = "left by job A"
        nn.Module.agentnas_trace = "left by job A"
        with open("leftover.txt", "w") as f:
            f.write("x")
        print("OUTPUT OF JOB A", flush=True)
        os._exit(3)  # no result: the pool reports the output's tail
'''

LOOK_FOR_TRACES = '''
import os
import torch
from torch import nn


class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        seen = [getattr(torch, "agentnas_trace", None), getattr(nn.Module, "agentnas_trace", None),
                os.path.exists("leftover.txt")]
        print(f"seen {seen}", flush=True)
        os._exit(4)
'''

FORGE_ZYGOTE_LINES = '''
import os
from torch import nn


class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        for fd in range(3, 12):  # whichever is the protocol pipe
            try:
                os.write(fd, b'{"kind": "exit", "pid": 1, "returncode": 0}\\n{"kind": "ready"}\\n')
            except OSError:
                pass
        raise RuntimeError("forged")
'''


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


async def test_fork_server_reuses_one_zygote_and_each_job_starts_clean(tmp_path, dirs):
    scratch = tmp_path / "scratch"
    async with WorkerPool(dirs.task, "cpu", spares=1, limits=LIMITS, scratch_root=scratch,
                          unsafe_disable=frozenset({"gate"})) as pool:
        [zygote] = _worker_cwds(scratch)
        assert _threads(zygote) == 1  # what it forks from: no OpenMP pool or other thread
        first, first_pids, _ = await _run_watched(pool, Job(eval_id="a", request="validate",
                                                            model_source=LEAVE_TRACES))
        assert first.status == "error" and "exited with code 3" in first.reason, first
        assert "OUTPUT OF JOB A" in first.reason + first.traceback
        started = time.monotonic()
        second, second_pids, _ = await _run_watched(pool, Job(eval_id="b", request="validate",
                                                              model_source=LOOK_FOR_TRACES))
        took = time.monotonic() - started
        # module state, scratch files and output of job A are all gone
        assert second.status == "error" and "exited with code 4" in second.reason, second
        assert "seen [None, None, False]" in second.reason, second
        assert "OUTPUT OF JOB A" not in second.traceback
        assert took < 0.2, took  # fork, walls, model and result: no process start, no torch import
        assert _worker_cwds(scratch) == [zygote] and _threads(zygote) == 1
        assert len(first_pids) == len(second_pids) == 1 and first_pids != second_pids
        assert zygote not in first_pids | second_pids and all(group_gone(p) for p in first_pids | second_pids)
        ok = await pool.run(Job(eval_id="c", request="validate", model_source=SMALL_MODEL), print)
        assert ok.status == "ok" and not [w for w in ok.warnings if "threads" in w]
        assert _worker_cwds(scratch) == [zygote]
        assert [p.name for p in scratch.iterdir()] == [Path(os.readlink(f"/proc/{zygote}/cwd")).name]


async def test_fork_server_recovers_from_timeouts_forgery_and_a_dead_zygote(tmp_path, dirs):
    scratch = tmp_path / "scratch"
    limits = msgspec.structs.replace(LIMITS, wall_s=3)
    sleeper = (HOSTILE / "sleep_forever.py").read_text()
    async with WorkerPool(dirs.task, "cpu", spares=1, limits=limits, scratch_root=scratch,
                          unsafe_disable=frozenset({"gate", "audit_hook"})) as pool:
        [zygote] = _worker_cwds(scratch)
        result, pids, _ = await _run_watched(pool, Job(eval_id="t", request="validate", model_source=sleeper))
        assert result.status == "timeout" and "wall-clock limit of 3 s" in result.reason
        assert pids and all(group_gone(p) for p in pids) and group_gone(zygote)  # child and zygote both killed
        await pool.start()
        [fresh] = _worker_cwds(scratch)
        assert fresh != zygote

        # lines a child forges on the protocol pipe never pass for the zygote's
        result = await pool.run(Job(eval_id="f", request="validate", model_source=FORGE_ZYGOTE_LINES), print)
        assert result.status == "error" and "broke the protocol" in result.reason, result
        await pool.start()
        [fresh] = _worker_cwds(scratch)

        os.kill(fresh, signal.SIGKILL)  # a zygote that dies while idle is replaced; the job does not pay
        result = await pool.run(Job(eval_id="d", request="validate", model_source=SMALL_MODEL), print)
        assert result.status == "ok", result
        assert len(_worker_cwds(scratch)) == 1 and fresh not in _worker_cwds(scratch)


async def test_single_use_mode_still_serves_one_job_per_process(tmp_path, dirs):
    scratch = tmp_path / "scratch"
    assert WorkerPool(dirs.task, "cuda:0", spares=0, limits=LIMITS, scratch_root=scratch, fork=True)._fork is False
    async with WorkerPool(dirs.task, "cpu", spares=1, limits=LIMITS, scratch_root=scratch, fork=False) as pool:
        warm = set(_worker_cwds(scratch))
        result, pids, _ = await _run_watched(pool, Job(eval_id="s", request="validate", model_source=SMALL_MODEL))
        assert result.status == "ok", result
        assert pids == warm and all(group_gone(p) for p in pids)  # the warm worker itself ran it, and is gone


# ---------------------------------------------------------------- reused workers (the GPU default)


WRITE_SCRATCH_AND_ALLOCATE = SMALL_MODEL.replace("super().__init__()", '''super().__init__()
        import os
        with open("leftover.txt", "w") as f:
            f.write("x")
        os.makedirs("sub/deeper")
        with open("sub/deeper/file.txt", "w") as f:
            f.write("x")
        self.register_buffer("big", torch.ones(50_000_000))  # 200 MB: this job's peak''')

LOOK_FOR_LEFTOVERS = SMALL_MODEL.replace("super().__init__()", '''super().__init__()
        import os
        if os.path.exists("leftover.txt") or os.path.exists("sub"):
            raise RuntimeError("found the previous job's files")''')

TAMPER = SMALL_MODEL.replace("super().__init__()", '''super().__init__()
        torch.backends.cudnn.benchmark = not torch.backends.cudnn.benchmark
        torch.nn.functional.gelu = torch.tanh''')


async def test_reused_worker_serves_jobs_in_one_process_and_retires_when_it_must(tmp_path, dirs):
    scratch = tmp_path / "scratch"
    async with WorkerPool(dirs.task, "cpu", spares=1, limits=LIMITS, scratch_root=scratch, fork=False,
                          jobs_per_worker=3, unsafe_disable=frozenset({"gate"})) as pool:
        [worker] = _worker_cwds(scratch)

        async def run(eval_id: str, source: str, request: str = "proxy", **job: object):
            result, pids, _ = await _run_watched(pool, Job(eval_id=eval_id, request=request, model_source=source,
                                                           recipe={"epochs": 1, "batch_size": 64}, **job))
            return result, pids

        big, big_pids = await run("big", WRITE_SCRATCH_AND_ALLOCATE)
        clean, clean_pids = await run("clean", LOOK_FOR_LEFTOVERS)
        assert big.status == clean.status == "ok", (big, clean)
        assert big_pids == clean_pids == {worker}, (big.warnings, clean.warnings)  # one warm process served both
        assert clean.peak_memory_mb < big.peak_memory_mb - 150  # the pool reset the peak mark between jobs
        assert not [w for w in big.warnings + clean.warnings if "retired" in w]

        # the third job is its last: it ends with a result, and a fresh process takes the next
        tampered, _ = await run("tamper", TAMPER)
        assert tampered.status == "ok"
        assert any("changed torch.backends.cudnn.benchmark" in w and "put back" in w for w in tampered.warnings)
        assert any("retired" in w and "torch.nn.functional.gelu" in w for w in tampered.warnings), tampered.warnings
        assert group_gone(worker)

        # tampering retires a worker before its last job too
        await pool.start()
        [second] = _worker_cwds(scratch)
        tampered, pids = await run("tamper2", TAMPER)
        assert pids == {second} and any("retired" in w for w in tampered.warnings)
        await pool.start()
        [third] = _worker_cwds(scratch)
        assert group_gone(second) and third != second

        # a job that writes weights needs a worker whose walls are still open, and leaves with it
        await run("warm", SMALL_MODEL)
        wave1, pids = await run("wave1", SMALL_MODEL, "final_wave1", weights_dir=str(tmp_path / "weights"))
        assert wave1.status == "ok" and Path(wave1.weights_path).parent == tmp_path / "weights"
        assert third not in pids and all(group_gone(p) for p in pids)
        assert _worker_cwds(scratch) == [third]  # the used worker stays for jobs without weights


BURN_ONE_CPU_SECOND = SMALL_MODEL.replace("super().__init__()", '''super().__init__()
        import time
        start = time.process_time()
        while time.process_time() - start < 1.0:
            pass''')


async def test_reused_worker_gets_a_fresh_cpu_limit_for_each_job(tmp_path, dirs):
    busy = (HOSTILE / "infinite_forward.py").read_text()
    async with WorkerPool(dirs.task, "cpu", spares=1, limits=LIMITS, scratch_root=tmp_path / "scratch", fork=False,
                          jobs_per_worker=50, unsafe_disable=frozenset({"gate"})) as pool:
        for i in range(3):  # together over the 2 s per job, each under it
            first, first_pids, _ = await _run_watched(pool, Job(eval_id=f"ok{i}", request="validate",
                                                                model_source=BURN_ONE_CPU_SECOND))
            assert first.status == "ok", first
        # the soft limit was moved for this job too: it stops after about cpu_s more seconds, not 50 x cpu_s
        result, pids, _ = await _run_watched(pool, Job(eval_id="busy", request="validate", model_source=busy))
        assert pids == first_pids
        assert result.status == "timeout" and "CPU time limit of 2 s" in result.reason, result
        assert all(group_gone(p) for p in pids)


async def test_a_reused_worker_on_its_last_job_is_replaced_while_it_runs(tmp_path, dirs):
    scratch = tmp_path / "scratch"
    async with WorkerPool(dirs.task, "cpu", spares=1, limits=LIMITS, scratch_root=scratch, fork=False,
                          jobs_per_worker=2, unsafe_disable=frozenset({"gate"})) as pool:
        [first] = _worker_cwds(scratch)
        await pool.run(Job(eval_id="one", request="validate", model_source=SMALL_MODEL), print)
        last = asyncio.create_task(pool.run(Job(eval_id="two", request="validate", model_source=BURN_ONE_CPU_SECOND),
                                            print))
        seen: set[int] = set()
        while not last.done():
            seen.update(_worker_cwds(scratch))
            await asyncio.sleep(0.02)
        assert (await last).status == "ok"
        assert first in seen and len(seen) == 2  # the replacement started during the last job
        assert group_gone(first) and len(_worker_cwds(scratch)) == 1


SWITCHES_DEFAULT_DTYPE = SMALL_MODEL.replace("    def forward(self, x):\n", '''    def forward(self, x):
        torch.set_default_dtype(torch.float64)  # left on: every model built later would be float64
''')


async def test_after_a_candidate_flips_a_switch_the_next_trains_exactly_as_in_a_fresh_process(tmp_path, dirs):
    def job(eval_id: str, source: str) -> Job:
        return Job(eval_id=eval_id, request="proxy", model_source=source, seed=7,
                   recipe={"epochs": 2, "batch_size": 64})

    async def losses(pool: WorkerPool, eval_id: str, source: str) -> tuple[object, list[float]]:
        progress: list[dict] = []
        result = await pool.run(job(eval_id, source), progress.append)
        return result, [p["train_loss"] for p in progress]

    async with WorkerPool(dirs.task, "cpu", spares=1, limits=LIMITS, scratch_root=tmp_path / "fresh", fork=False,
                          unsafe_disable=frozenset({"gate"})) as fresh:
        reference, reference_losses = await losses(fresh, "reference", SMALL_MODEL)
    async with WorkerPool(dirs.task, "cpu", spares=1, limits=LIMITS, scratch_root=tmp_path / "reused", fork=False,
                          jobs_per_worker=4, unsafe_disable=frozenset({"gate"})) as reused:
        flipped, _ = await losses(reused, "flips", SWITCHES_DEFAULT_DTYPE)
        assert any("changed default dtype" in w and "put back" in w for w in flipped.warnings), flipped
        after, after_losses = await losses(reused, "after", SMALL_MODEL)
    assert reference.status == after.status == "ok", (reference, after)
    assert after_losses == reference_losses and after.val_metric == reference.val_metric
