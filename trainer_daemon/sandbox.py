"""Sandboxed worker processes for evaluation jobs, kept warm.

A worker (worker.py) is a child process in its own process group, with an
allow-listed environment (no API keys), a fresh scratch folder as cwd and
HOME, resource limits, an audit hook and, where the OS allows, no network. It
imports torch and loads the task before it says "ready", so a job starts in
well under a second; by default it runs exactly one job and exits. On CPU
(fork mode, the default there) a worker is instead a zygote that stays clean
and forks a sandboxed child per job, job after job, so a job pays for no
process start. CUDA does not survive a fork; there a worker may instead serve
up to `jobs_per_worker` jobs (walls closed once, a runtime check between jobs,
see reuse.py), so a job pays neither a process start nor a CUDA context. The
pool keeps `spares` such workers started, enforces a wall-clock deadline by
killing the whole process group (and the child's), and turns every way a job
can end into a JobResult (in fork mode from the child's exit status, which the
zygote reports):

- a result line from the worker -> that result (an allocation failure
  reported as "error" becomes "oom");
- wall-clock deadline, or SIGXCPU from the CPU-time limit -> "timeout";
- any other death without a result -> "error" with the tail of its output
  ("oom" when that tail shows a MemoryError).

This module does not import torch; only the worker does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import os
import resource
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from agentnas.sandbox.env import child_env as allow_listed_env
from agentnas.trainer_daemon.job import WHOLE_JOB_CAP, WHOLE_JOB_GRACE_S
from agentnas.sandbox.process import Tail, kill_group, last_line, looks_oom

if TYPE_CHECKING:
    from agentnas.trainer_daemon.harness import Job, JobResult

__all__ = ["Limits", "WorkerPool", "WorkerStartError", "child_env", "wall_timeout_s"]

WALL_FACTOR = 2.0  # the job's device-time cap leaves out evaluation and data handling
WALL_GRACE_S = 300.0
STARTUP_TIMEOUT_S = 600.0
RESULT_EXIT_GRACE_S = 2.0  # after a result line the worker exits by itself; then it is killed
FINISH_GRACE_S = 30.0  # after a result line a zygote (or a reused worker) gets this long to be ready again
PROTO_LINE_LIMIT = 2**20
log = structlog.get_logger("agentnas.sandbox")
OUTSIDE_SIGNALS = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP})

# What a worker inherits besides the sandbox's own allow-list (PATH, LANG, TZ, LC_*): where its
# Python and packages are. HOME, TMPDIR and the thread counts are set, not inherited.
PASSED_ENV = ("PYTHONPATH", "VIRTUAL_ENV", "LD_LIBRARY_PATH")


class Limits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    memory_mb: float = 11264.0  # CPU: address space above the warm worker (+1 GB headroom); CUDA: GPU memory
    cpu_s: float = 4 * 3600.0  # CPU seconds of one job, all threads together (SIGXCPU -> timeout)
    file_mb: float = 4096.0  # largest file a job may write, saved weights included
    nproc: int = 64  # threads/processes a job may add (RLIMIT_NPROC; not enforced for root)
    wall_s: float = 26 * 3600.0  # hard wall-clock cap of one job
    output_chars: int = 4000  # tail of the worker's stdout+stderr kept for the result
    threads: int = 1  # OMP / MKL / torch intra-op threads
    host_memory_mb: float = 32768.0  # CUDA workers only: host memory above the warm worker (RLIMIT_DATA)


class WorkerStartError(RuntimeError):
    """A worker died or fell silent before it was ready; the message ends with its output."""


def wall_timeout_s(limits: Limits, time_cap_s: float, request: str = "proxy") -> float:
    """Wall-clock deadline of one job, at most wall_s: for `validate` and `equivalence` their cap
    (on the whole job) plus a little grace; for training, a multiple of the device-time cap plus grace."""
    if request in WHOLE_JOB_CAP:
        return min(limits.wall_s, time_cap_s + WHOLE_JOB_GRACE_S)
    return min(limits.wall_s, time_cap_s * WALL_FACTOR + WALL_GRACE_S)


def child_env(parent: Mapping[str, str], *, scratch: Path, threads: int, device: str) -> dict[str, str]:
    """The complete environment of a worker: the sandbox's allow-list, plus the GPU it may see."""
    passed = PASSED_ENV + (("CUDA_VISIBLE_DEVICES",) if device.startswith("cuda") else ())
    return allow_listed_env(parent, scratch=scratch, threads=threads, passed=passed,
                            extra={"PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1"})


@dataclasses.dataclass
class _Worker:
    proc: asyncio.subprocess.Process
    proto: asyncio.StreamReader
    transport: asyncio.BaseTransport
    scratch: Path
    tail: Tail
    drain: asyncio.Task[None]
    hello: dict[str, Any] = dataclasses.field(default_factory=dict)
    job_pid: int | None = None  # fork mode: the child running the current job
    jobs_done: int = 0  # reuse mode: jobs served so far (a job that writes weights needs a fresh worker)


@dataclasses.dataclass
class _Outcome:
    deadline_s: float
    result: JobResult | None = None
    progress: dict[str, Any] = dataclasses.field(default_factory=dict)
    timed_out: bool = False
    protocol_error: str = ""
    tail: Tail | None = None  # fork mode: this job's output (a zygote outlives many jobs)
    started: bool = False  # fork mode: the zygote forked a child for the job; reuse: the worker read it
    threads: int | None = None  # fork mode: the zygote's threads when it forked
    returncode: int | None = None  # fork mode: the child's exit status
    reusable: bool = False  # fork or reuse mode: the worker said "ready" again


async def _drain(stream: asyncio.StreamReader, tail: Tail) -> None:
    while chunk := await stream.read(65536):
        tail.feed(chunk)


def _kill_group(worker: _Worker) -> None:
    """The worker leads its own group (start_new_session); a forked child leads another."""
    for group in (worker.proc.pid, worker.job_pid):
        kill_group(group)


def _ready(worker: _Worker) -> asyncio.Future[_Worker]:
    future: asyncio.Future[_Worker] = asyncio.get_running_loop().create_future()
    future.set_result(worker)
    return future


def _renew_per_job_marks(pid: int, cpu_s: float) -> None:
    """Before a reused worker's next job: CPU time allowed from now (the soft limit, SIGXCPU; the
    hard limit set at its start covers all its jobs) and its peak-RSS mark (VmHWM, the harness's
    CPU peak memory) started afresh. Done from outside: inside the walls setrlimit is refused, /proc
    is read-only, and a write handle opened before would have stopped the read-only remount."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        used = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        hard = resource.prlimit(pid, resource.RLIMIT_CPU)[1]
        resource.prlimit(pid, resource.RLIMIT_CPU, (min(int(used + cpu_s) + 1, hard), hard))
        with open(f"/proc/{pid}/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except (OSError, ValueError, IndexError):
        pass  # the worker is gone (the job then fails at once), or this is not Linux


class WorkerPool:
    """Keeps `spares` sandboxed workers ready for `task_ref` on `device`.

    With `fork` (the default on "cpu"; never on other devices, since CUDA does
    not survive a fork) each worker is a zygote that forks one sandboxed child
    per job and serves job after job; otherwise each worker process serves up
    to `jobs_per_worker` jobs itself (1 = single-use).
    `unsafe_disable` (test only) names walls the workers leave off: "gate",
    "audit_hook". It exists so the tests can show each remaining wall alone.
    """

    def __init__(self, task_ref: str, device: str, *, spares: int, limits: Limits, scratch_root: Path,
                 python: str = sys.executable, unsafe_disable: frozenset[str] = frozenset(),
                 fork: bool | None = None, jobs_per_worker: int = 1) -> None:
        unknown = set(unsafe_disable) - {"gate", "audit_hook"}
        if unknown:
            raise ValueError(f"unknown walls to disable: {sorted(unknown)}")
        self._task_ref, self._device, self._limits = task_ref, device, limits
        self._spare_count, self._python = spares, python
        self._scratch_root = Path(scratch_root)
        self._unsafe_disable = frozenset(unsafe_disable)
        self._fork = device == "cpu" and fork is not False
        self._jobs = 1 if self._fork else max(1, jobs_per_worker)
        self._returns = self._fork or self._jobs > 1  # a worker comes back after a job
        self._spares: list[asyncio.Future[_Worker]] = []
        self._busy: dict[int, _Worker] = {}
        self._leased = 0  # runs holding or waiting for a worker; in fork mode their zygotes come back
        self._leaving = 0  # reuse mode: leased workers on their last job (they will not come back)
        self._closed = False

    async def __aenter__(self) -> WorkerPool:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def running_pids(self) -> list[int]:
        """Process ids of the processes running a job now (in fork mode the children, not the zygotes)."""
        if self._fork:
            return [w.job_pid for w in self._busy.values() if w.job_pid is not None]
        return list(self._busy)

    async def start(self) -> None:
        """Start the spares and wait until each is ready (or failed)."""
        self._top_up()
        await asyncio.gather(*self._spares, return_exceptions=True)

    async def run(self, job: Job, on_progress: Callable[[dict], Awaitable[None] | None]) -> JobResult:
        """Run `job` in a fresh process; every outcome, including the process's death, is a JobResult."""
        from agentnas.trainer_daemon.harness import JobResult

        if self._closed:
            raise RuntimeError("WorkerPool is closed")
        self._leased += 1
        try:
            for _ in range(3):
                try:
                    worker = await self._take(fresh=bool(job.weights_dir))
                except WorkerStartError as exc:  # before the candidate's code: the machinery's fault
                    reason, _, output = str(exc).partition("\n")
                    why = f"worker failed to start: {reason}"[:300]
                    return JobResult(status="error", reason=why, traceback=output, fault=why)
                outcome = await self._serve(worker, job, on_progress)
                lost = self._returns and not (outcome.started or outcome.timed_out or outcome.protocol_error)
                if not lost or self._closed:  # else the worker died before it took the job: not the job's doing
                    break
            return self._classify(outcome, worker)
        finally:
            self._leased -= 1
            self._top_up()  # in fork mode: replace a zygote that did not come back

    async def _serve(self, worker: _Worker, job: Job,
                     on_progress: Callable[[dict], Awaitable[None] | None]) -> _Outcome:
        """Drive one job on `worker`, then keep the worker (a zygote ready again) or dispose of it."""
        self._busy[worker.proc.pid] = worker
        outcome: _Outcome | None = None
        leaving = self._jobs > 1 and (worker.jobs_done + 1 >= self._jobs or bool(job.weights_dir))
        if leaving:  # start its replacement now, not after this job
            self._leaving += 1
            self._top_up()
        try:
            outcome = await self._drive(worker, job, on_progress)
        finally:
            del self._busy[worker.proc.pid]
            self._leaving -= leaving
            keep = (outcome is not None and outcome.reusable and not self._closed
                    and len(self._spares) + self._leased <= self._spare_count)
            if keep:
                worker.jobs_done += 1
                self._spares.insert(0, _ready(worker))
            else:
                finished = outcome is not None and outcome.result is not None  # then it is about to exit
                await self._dispose(worker, grace_s=RESULT_EXIT_GRACE_S if finished and not self._fork else 0.0)
        return outcome

    async def close(self) -> None:
        """Kill every worker, spare or busy, and remove their scratch folders."""
        self._closed = True
        for worker in self._busy.values():
            _kill_group(worker)  # their run() disposes of them
        spares, self._spares = self._spares, []
        for task in spares:
            task.cancel()
        for outcome in await asyncio.gather(*spares, return_exceptions=True):
            if isinstance(outcome, _Worker):
                await self._dispose(outcome)

    # ------------------------------------------------------------ workers

    def _top_up(self) -> None:
        """Start workers up to `spares`; workers out on a job count when they come back (fork, reuse)."""
        coming_back = self._leased - self._leaving if self._returns else 0
        while not self._closed and len(self._spares) + coming_back < self._spare_count:
            self._spares.append(asyncio.create_task(self._spawn()))

    async def _take(self, fresh: bool = False) -> _Worker:
        """A ready spare first; with `fresh`, one that has served no job yet (its walls are still open)."""
        for _ in range(3):
            usable = [t for t in self._spares if not (fresh and t.done() and not t.cancelled()
                                                      and t.exception() is None and t.result().jobs_done)]
            if not usable:
                usable = [asyncio.create_task(self._spawn())]
                self._spares.append(usable[0])
            task = next((t for t in usable if t.done()), usable[0])
            self._spares.remove(task)
            self._top_up()
            worker = await task
            if worker.proc.returncode is None:
                return worker
            await self._dispose(worker)  # died while waiting for a job
        raise WorkerStartError("workers keep dying before they get a job")

    async def _spawn(self) -> _Worker:
        self._scratch_root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="job-", dir=self._scratch_root))
        read_fd, write_fd = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                self._python, "-P", "-s", "-m", "agentnas.trainer_daemon.worker",
                "--task", self._task_ref, "--device", self._device, "--proto-fd", str(write_fd),
                "--limits", msgspec.json.encode(self._limits).decode(),
                "--unsafe-disable", ",".join(sorted(self._unsafe_disable)),
                *(["--fork"] if self._fork else ["--jobs", str(self._jobs)]),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                pass_fds=(write_fd,), start_new_session=True, cwd=scratch,
                env=child_env(os.environ, scratch=scratch, threads=self._limits.threads, device=self._device))
        except BaseException:
            os.close(read_fd)
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        finally:
            os.close(write_fd)  # the child holds its copy; EOF then means the child is gone
        reader = asyncio.StreamReader(limit=PROTO_LINE_LIMIT)
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), open(read_fd, "rb", buffering=0))
        tail = Tail(self._limits.output_chars)
        assert proc.stdout is not None
        worker = _Worker(proc=proc, proto=reader, transport=transport, scratch=scratch, tail=tail,
                         drain=asyncio.create_task(_drain(proc.stdout, tail)))
        hello = None
        try:
            line = await asyncio.wait_for(reader.readline(), STARTUP_TIMEOUT_S)
            hello = msgspec.json.decode(line) if line else None
        except (TimeoutError, ValueError):  # silent too long, or not a protocol line
            pass
        except asyncio.CancelledError:
            await self._dispose(worker)
            raise
        if not (isinstance(hello, dict) and hello.get("kind") == "ready"):
            await self._dispose(worker)
            output = worker.tail.text(self._limits.output_chars)
            raise WorkerStartError(f"{last_line(output)} (exit code {worker.proc.returncode})\n{output}")
        worker.hello = hello
        return worker

    async def _dispose(self, worker: _Worker, grace_s: float = 0.0) -> None:
        """Kill the worker's process group, reap it, collect its output, remove its scratch folder."""
        if grace_s > 0:
            try:
                await asyncio.wait_for(worker.proc.wait(), grace_s)
            except TimeoutError:
                pass
        _kill_group(worker)  # also any process it managed to start
        try:
            await asyncio.wait_for(worker.proc.wait(), 30)
        except TimeoutError:
            pass  # stuck in the kernel; nothing more to do from here
        worker.transport.close()
        try:
            await asyncio.wait_for(worker.drain, 5)
        except (TimeoutError, asyncio.CancelledError):
            worker.drain.cancel()
        shutil.rmtree(worker.scratch, ignore_errors=True)

    # ------------------------------------------------------------ one job

    async def _drive(self, worker: _Worker, job: Job,
                     on_progress: Callable[[dict], Awaitable[None] | None]) -> _Outcome:
        """Send the job and follow its protocol lines until a result (fork mode: the child's end), EOF
        or the deadline."""
        outcome = _Outcome(deadline_s=wall_timeout_s(self._limits, job.time_cap_s, job.request),
                           tail=Tail(self._limits.output_chars) if self._fork else None)
        clock = asyncio.timeout(outcome.deadline_s)
        try:
            async with clock:
                stdin = worker.proc.stdin
                assert stdin is not None
                if worker.jobs_done:
                    _renew_per_job_marks(worker.proc.pid, self._limits.cpu_s)
                    worker.tail.clear()  # this job's output only (flushed before the last result)
                stdin.write(msgspec.json.encode(job) + b"\n")
                await stdin.drain()
                if not self._returns:
                    stdin.close()
                while True:
                    try:
                        line = await worker.proto.readline()
                        if not line or await self._take_line(worker, outcome, msgspec.json.decode(line),
                                                             on_progress, clock):
                            break
                    except (ValueError, KeyError, TypeError, msgspec.ValidationError) as exc:
                        outcome.protocol_error = f"{type(exc).__name__}: {exc}"[:200]
                        break
        except TimeoutError:
            if not clock.expired():  # not the job's deadline: something of ours timed out (the bus?);
                raise  # the daemon retries the request, it is never the candidate's timeout
            outcome.timed_out = True
            if worker.job_pid is not None:
                await self._reap_child(worker, outcome)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the worker died before it read the job; its exit status says why
        return outcome

    async def _reap_child(self, worker: _Worker, outcome: _Outcome) -> None:
        """Kill a timed-out child before its zygote, so the zygote reaps it: an orphan would wait
        for init, and its output so far would be lost."""
        assert worker.job_pid is not None and outcome.tail is not None
        try:
            kill_group(worker.job_pid)
            async with asyncio.timeout(2.0):
                while line := await worker.proto.readline():
                    message = msgspec.json.decode(line)
                    if message.get("kind") == "output":
                        outcome.tail.feed(str(message["data"]).encode())
                    elif message.get("kind") == "exit":
                        worker.job_pid = None
                        break
        except (OSError, TimeoutError, ValueError, AttributeError, KeyError):
            pass  # the zygote is killed next in any case

    async def _take_line(self, worker: _Worker, outcome: _Outcome, message: dict[str, Any],
                         on_progress: Callable[[dict], Awaitable[None] | None], clock: asyncio.Timeout) -> bool:
        """Act on one protocol line; True when the job is over. A zygote adds started/output/exit/ready,
        a reused worker ready."""
        from agentnas.trainer_daemon.harness import JobResult

        kind = message["kind"]
        if kind == "progress" and outcome.result is None:
            outcome.progress = message["progress"]
            try:  # progress is for people watching: its failure (the bus away) is never the job's
                if inspect.isawaitable(reply := on_progress(outcome.progress)):
                    await reply
            except Exception as exc:
                log.warning("progress not delivered", error=str(exc) or type(exc).__name__)
        elif kind == "result" and outcome.result is None:
            outcome.result = msgspec.convert(message["result"], JobResult)
            if not self._returns:
                return True
            finish_by = asyncio.get_running_loop().time() + FINISH_GRACE_S
            clock.reschedule(min(clock.when() or finish_by, finish_by))
        elif kind == "accepted" and self._jobs > 1 and outcome.result is None:
            outcome.started = True  # the worker read the job: from here on its death is the job's
        elif kind == "ready" and self._jobs > 1 and outcome.result is not None:
            outcome.reusable = True  # a reused worker checked the runtime and waits for the next job
            return True
        elif not self._fork or kind not in ("started", "output", "exit"):
            if kind not in ("progress", "result", "accepted"):
                raise KeyError(f"unexpected line kind {kind!r}")
        elif kind == "started":
            worker.job_pid, outcome.started = int(message["pid"]), True
            outcome.threads = int(message["threads"])
        elif kind == "output":
            assert outcome.tail is not None
            outcome.tail.feed(str(message["data"]).encode())
        else:  # "exit": the child is gone; the zygote removes its scratch folder and says ready
            outcome.returncode, worker.job_pid = int(message["returncode"]), None
            ready = msgspec.json.decode(await worker.proto.readline() or b"{}")
            outcome.reusable = isinstance(ready, dict) and ready.get("kind") == "ready"
            return True
        return False

    def _classify(self, outcome: _Outcome, worker: _Worker) -> JobResult:
        from agentnas.trainer_daemon.harness import JobResult

        result = outcome.result
        if result is not None:
            if result.status == "error" and looks_oom(f"{result.reason}\n{result.traceback}"):
                result = msgspec.structs.replace(result, status="oom")
            if outcome.threads not in (None, 1):  # then OpenMP in the child may hang or misbehave
                result = msgspec.structs.replace(result, warnings=[
                    *result.warnings, f"sandbox: the zygote had {outcome.threads} threads when it forked"])
            return result
        tail = outcome.tail if outcome.tail is not None else worker.tail
        output = tail.text(self._limits.output_chars)
        rc = outcome.returncode if outcome.returncode is not None else worker.proc.returncode
        if outcome.timed_out:
            status, reason = "timeout", f"wall-clock limit of {outcome.deadline_s:g} s exceeded; process group killed"
        elif outcome.protocol_error:
            status, reason = "error", f"worker broke the protocol ({outcome.protocol_error}); killed"
        elif rc == -signal.SIGXCPU:
            status, reason = "timeout", f"CPU time limit of {self._limits.cpu_s:g} s exceeded (SIGXCPU)"
        elif looks_oom(output):
            status, reason = "oom", f"worker ran out of memory: {last_line(output)}"
        elif rc is not None and -rc in OUTSIDE_SIGNALS and not self._closed:
            # the pool sends no such signal before a deadline: an operator or the host's
            # out-of-memory killer did; not the candidate's doing, so the job is tried again
            return JobResult(status="error", fault=f"worker killed by {signal.Signals(-rc).name} from outside "
                                                   "(an operator, or the host's out-of-memory killer)",
                             traceback=output)
        elif rc is not None and rc < 0:
            status, reason = "error", f"worker killed by {signal.Signals(-rc).name} without a result"
        else:
            status, reason = "error", f"worker exited with code {rc} without a result: {last_line(output)}"
        return JobResult(status=status, reason=reason[:300], traceback=output,
                         device_time_s=float(outcome.progress.get("device_time_s") or 0.0),
                         epochs_done=int(outcome.progress.get("epoch") or 0))
