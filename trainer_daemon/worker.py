"""Child side of sandbox.WorkerPool: one sandboxed evaluation per process.

The pool starts it as

    python -P -s -m agentnas.trainer_daemon.worker --task REF --device DEV --proto-fd N --limits JSON

and it goes, in order:
1. leave the network (a fresh, empty network namespace) and the host's mount
   namespace; both need root, else the audit hook is the only wall there;
2. import torch and the harness and load the task data (trusted work, before
   any limit applies);
3. resource limits: CPU seconds; memory (address space on CPU; on CUDA a
   fraction of the GPU plus a data-size limit on host memory); file size;
   processes; no core files;
4. write {"kind": "ready"} on the protocol pipe and read one Job line from stdin;
5. make every mount read-only except the scratch and weights folders,
   install the audit hook, run the static gate, run harness.run_job, sending
   {"kind": "progress"} lines;
6. write {"kind": "result"} and leave through os._exit, so no code of the
   candidate runs at interpreter exit.

With --jobs N (N > 1; the CUDA default) the process serves up to N jobs: the
walls of step 5 close once, on the first job, and stay; the hard CPU-time
limit covers N jobs. After each job reuse.RuntimeState puts global switches
back and checks that the candidate left the shared runtime as it found it.
Then the process either says "ready" again, with its scratch folder emptied
(before the next job the pool moves the soft CPU-time limit and resets the
peak-RSS mark, which no code inside the walls may touch), or, when the check
failed, the job wrote weights (its walls let it write there) or N jobs are
done, sends the result and exits.

With --fork (CPU only) the process is a zygote instead: it does step 2 with
one intra-op thread and says "ready" with no walls of its own; for each job
line it forks a child that does steps 1 and 3-6 (in a scratch subfolder, a
process group of its own), relays the child's protocol lines and output,
reports {"kind": "started"} and {"kind": "exit", "returncode"}, removes the
child's folder and says "ready" again.

Protocol lines travel on a pipe of their own (--proto-fd). stdout and stderr
belong to the candidate and are captured and truncated by the pool, so a
candidate that prints cannot forge a result. (Code that got past both the
gate and the audit hook could still os.write() to that descriptor: it shares
the process. The walls make that unreachable; the pipe is not a wall itself.)

Test-only: `--unsafe-disable gate,audit_hook` switches walls off so the tests
can show that each remaining wall holds by itself. Nothing else passes it.
"""

from __future__ import annotations

import argparse
import os
import resource
import selectors
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable
from typing import IO, Any

import msgspec

from agentnas.sandbox.audit import make_audit_hook, python_roots, strict_policy
from agentnas.sandbox.limits import CPU_HARD_GRACE_S, apply_rlimits, cpu_used_s
from agentnas.sandbox.limits import status_bytes  # noqa: F401  reuse.py reads it from here
from agentnas.sandbox.process import kill_group
from agentnas.sandbox.walls import die_with_parent, leave_namespaces, make_read_only
from agentnas.trainer_daemon.sandbox import Limits

AS_HEADROOM_MB = 1024  # room above the warm process for lazy imports, thread stacks, allocator slack
LINE_LIMIT = 2**20  # the longest protocol line a forked child may send (the pool's limit too)
# What model code may read besides Python, its packages and the job's folders.
SYSTEM_READS = ("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/dev/null", "/dev/zero", "/dev/urandom",
                "/sys/devices/system/cpu")


# ---------------------------------------------------------------- walls


def apply_limits(limits: Limits, device: str, jobs: int = 1) -> dict[str, Any]:
    """Resource limits for the `jobs` jobs from here on; returns what was applied, for the ready line.

    CPU time is counted from now: the soft limit (SIGXCPU) is the first job's; the pool moves it
    before each later job, within a hard limit that covers all of them."""
    applied: dict[str, Any] = {"cpu_s": limits.cpu_s, "file_mb": limits.file_mb,
                               "nproc": limits.nproc, "nproc_enforced": os.getuid() != 0}
    address_space_mb: float | None = None
    data_mb: float | None = None
    if device.startswith("cuda"):
        # CUDA maps huge virtual ranges, so an address-space limit would break it; cap the GPU instead
        import torch

        index = torch.device(device).index
        index = torch.cuda.current_device() if index is None else index
        total_mb = torch.cuda.get_device_properties(index).total_memory / 2**20
        fraction = min(1.0, limits.memory_mb / total_mb)
        torch.cuda.set_per_process_memory_fraction(fraction, index)
        # host memory too: RLIMIT_DATA counts private writable mappings, not CUDA's reserved ranges
        data_mb = limits.host_memory_mb + AS_HEADROOM_MB
        applied.update(cuda_memory_fraction=round(fraction, 4), host_memory_mb=limits.host_memory_mb)
    else:
        address_space_mb = limits.memory_mb + AS_HEADROOM_MB
        applied["memory_mb"] = limits.memory_mb
    apply_rlimits(cpu_s=limits.cpu_s, cpu_hard_s=limits.cpu_s * jobs, file_mb=limits.file_mb, nproc=limits.nproc,
                  address_space_mb=address_space_mb, data_mb=data_mb)
    return applied


def read_roots(extra: list[str]) -> tuple[str, ...]:
    """Where the candidate's process may read: Python, its packages, system libraries, its own
    /proc entry, the job's folders."""
    candidates = [*python_roots(), *SYSTEM_READS, f"/proc/{os.getpid()}", *extra]
    return tuple(sorted({os.path.realpath(p) for p in candidates if p and os.path.exists(p)}))


# ---------------------------------------------------------------- protocol


def _plain(value: Any) -> Any:
    """numpy / torch scalars and anything else odd in a progress dict, as JSON-able values."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def send(proto: IO[bytes], kind: str, **fields: Any) -> None:
    proto.write(msgspec.json.encode({"kind": kind, **fields}, enc_hook=_plain) + b"\n")
    proto.flush()


def _crash_result(result_type: type, exc: BaseException) -> Any:
    status = "oom" if isinstance(exc, MemoryError) else "error"
    text = " ".join(str(exc).split())
    reason = f"worker: {type(exc).__name__}{': ' + text if text else ''}"[:300]
    return result_type(status=status, reason=reason, traceback="".join(traceback.format_exception(exc))[-4000:])


class Walls:
    """The walls that depend on the job, closed once per process: an audit hook cannot be removed,
    nor a read-only mount made writable again, so a reused worker keeps its first job's folders."""

    def __init__(self, namespaces: dict[str, bool], *, audit_hook: bool) -> None:
        self.namespaces, self.audit_hook = namespaces, audit_hook
        self.weights_dir: str | None = None
        self.warnings: list[str] = []

    def close_for(self, weights_dir: str) -> list[str] | None:
        """Warnings about missing walls; None when they were closed for another weights folder."""
        if self.weights_dir is None:
            self.warnings = close_in(weights_dir, self.namespaces, audit_hook=self.audit_hook)
            self.weights_dir = weights_dir
        return self.warnings if weights_dir == self.weights_dir else None


def close_in(weights_dir: str, namespaces: dict[str, bool], *, audit_hook: bool) -> list[str]:
    """The walls that depend on the job: read-only mounts and the audit hook. Returns warnings."""
    write_roots = [os.getcwd()]  # the scratch folder
    if weights_dir:
        os.makedirs(weights_dir, exist_ok=True)  # a trusted path, made before the walls go up
        write_roots.append(weights_dir)
    roots = tuple(os.path.realpath(p) for p in write_roots)
    warnings = []
    if not namespaces["network_isolated"]:
        warnings.append("sandbox: no network namespace; only the audit hook refuses sockets")
    if namespaces["mount_namespace"] and make_read_only(roots)[0]:
        os.chdir(roots[0])  # re-enter scratch through its writable bind mount
    else:
        warnings.append("sandbox: filesystem not read-only; only the audit hook refuses writes outside scratch")
    if audit_hook:
        sys.addaudithook(make_audit_hook(strict_policy(roots, read_roots(list(roots)))))
    return warnings


def _warm(args: argparse.Namespace) -> tuple[Any, Any, Limits]:
    """Trusted start-up: torch, the harness, the task data and a warm-up job. Returns (harness, data, limits)."""
    import torch  # warm: this import is most of a worker's start time

    from agentnas.trainer_daemon import harness
    from agentnas.trainer_daemon.tasks import load_task

    data = load_task(args.task)
    limits = msgspec.json.decode(args.limits, type=Limits)
    torch.set_num_threads(1 if args.fork else limits.threads)  # a zygote forks: no OpenMP pool then
    harness.warm_up(data, args.device)  # trusted; moves torch's lazy start-up before "ready"
    return harness, data, limits


def run_one(job: Any, proto: IO[bytes], harness: Any, data: Any, device: str, walls: Walls,
            disabled: set[str]) -> Any:
    """Close the walls around one job, gate it and run it (in a sandboxed process); returns its result."""
    warnings = walls.close_for(job.weights_dir)
    if warnings is None:  # the pool sends jobs that write weights to fresh workers only
        return harness.JobResult(status="error", reason="worker: its walls were closed for another weights "
                                                        "folder; the job needs a fresh worker")
    if "gate" not in disabled:
        from agentnas.trainer_daemon.gate import check_source

        reasons = check_source(job.model_source)
        if reasons:
            return harness.JobResult(status="rejected", reason=reasons[0], traceback="\n".join(reasons),
                                     warnings=warnings)
    try:
        result = harness.run_job(job, data, device, lambda progress: send(proto, "progress", progress=progress))
    except BaseException as exc:  # the harness should not raise, but a candidate's code may escape it
        result = _crash_result(harness.JobResult, exc)
    return msgspec.structs.replace(result, warnings=[*result.warnings, *warnings])


def serve(args: argparse.Namespace, proto: IO[bytes], namespaces: dict[str, bool]) -> None:
    """Limits on this process, then one job, or up to --jobs jobs with a runtime check after each."""
    harness, data, limits = _warm(args)
    reused = args.jobs > 1
    applied: dict[str, Any] = {**namespaces, **apply_limits(limits, args.device, args.jobs)}
    cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    disabled = set(filter(None, args.unsafe_disable.split(",")))
    walls = Walls(namespaces, audit_hook="audit_hook" not in disabled)
    state = None
    if reused:
        from agentnas.trainer_daemon import gate  # noqa: F401  imported now, not first by a job
        from agentnas.trainer_daemon.reuse import RuntimeState, Verdict

        cuda = args.device.startswith("cuda")
        state = RuntimeState(args.device, "VmData" if cuda else "VmSize", AS_HEADROOM_MB // 2 * 2**20)
    scratch = os.getcwd()  # the pool made it; a job may move the cwd, never this
    trusted_files = set(os.listdir(scratch))  # what torch's own start-up put there (caches)
    send(proto, "ready", pid=os.getpid(), walls=applied, disabled=sorted(disabled), jobs=args.jobs)
    for served in range(1, args.jobs + 1):
        line = sys.stdin.buffer.readline()
        if not line:
            return
        job = msgspec.json.decode(line, type=harness.Job)
        send(proto, "accepted")  # from here on a death is the job's; before, the pool tries another worker
        result = run_one(job, proto, harness, data, args.device, walls, disabled)
        retire = "single-use" if state is None else ""
        if state is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                verdict = state.after_job()
                os.chdir(scratch)
                left = _remove_new(scratch, keep=trusted_files)
                if left:
                    verdict.retire_because(f"what it left in scratch could not be removed ({left[0]})")
            except Exception as exc:  # e.g. a CUDA error the candidate left behind
                verdict = Verdict(warnings=[])
                verdict.retire_because(f"the runtime check failed: {type(exc).__name__}: {exc}"[:300])
            result = msgspec.structs.replace(result, warnings=[*result.warnings, *verdict.warnings])
            retire = (verdict.retire or (job.weights_dir and "wrote weights")
                      or (served == args.jobs and "served its jobs")
                      or (cpu_hard - cpu_used_s() < limits.cpu_s + CPU_HARD_GRACE_S and "CPU time spent"))
        send(proto, "result", result=result)
        if retire:
            return
        send(proto, "ready", pid=os.getpid())


def _remove_new(folder: str, keep: set[str]) -> list[str]:
    """Remove what a job added to `folder` (links removed, never followed); returns what is left.

    Path-based calls only: shutil.rmtree works through directory descriptors, which the audit
    hook refuses."""
    for name in set(os.listdir(folder)) - keep:
        path = os.path.join(folder, name)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                for root, dirs, files in os.walk(path, topdown=False):
                    for item in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
                        os.remove(os.path.join(root, item))
                    for item in dirs:
                        if not os.path.islink(os.path.join(root, item)):
                            os.rmdir(os.path.join(root, item))
                os.rmdir(path)
            else:
                os.remove(path)
        except OSError:
            pass
    return sorted(set(os.listdir(folder)) - keep)


# ---------------------------------------------------------------- fork server (CPU only)


def zygote(args: argparse.Namespace, proto: IO[bytes]) -> None:
    """Fork-server mode: stay clean and single-threaded, fork one sandboxed child per job line.

    The zygote never decodes a job, never runs candidate code, never installs
    the audit hook and never takes per-job limits: all of that happens in the
    child. One intra-op thread during warm-up means no OpenMP pool exists when
    it forks (GNU OpenMP does not survive fork).
    """
    harness, data, limits = _warm(args)
    disabled = set(filter(None, args.unsafe_disable.split(",")))
    send(proto, "ready", pid=os.getpid(), mode="fork", disabled=sorted(disabled))
    while line := sys.stdin.buffer.readline():
        scratch = tempfile.mkdtemp(prefix="job-", dir=os.getcwd())
        try:
            fork_job(line, proto, scratch, lambda job_proto: _child(
                line, job_proto, scratch, harness, data, limits, args.device, disabled))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        send(proto, "ready", pid=os.getpid())


def fork_job(line: bytes, proto: IO[bytes], scratch: str, child: Callable[[IO[bytes]], None]) -> None:
    """Fork `child` with fresh pipes for its protocol lines and output; relay both; report its end."""
    job_r, job_w = os.pipe()
    out_r, out_w = os.pipe()
    threads = len(os.listdir("/proc/self/task"))
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            os.setpgid(0, 0)  # a group of its own: killing it spares the zygote
            die_with_parent(parent)
            for fd in (job_r, out_r, proto.fileno()):
                os.close(fd)  # not the zygote's pipe: a job must not write there, nor linger on it
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out_w, 1)
            os.dup2(out_w, 2)
            child(os.fdopen(job_w, "wb"))
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(job_w)
    os.close(out_w)
    try:
        os.setpgid(pid, pid)  # both sides set it, so it holds before the zygote reports the pid
    except OSError:
        pass  # the child is already gone, or did it itself
    send(proto, "started", pid=pid, threads=threads)
    _relay(pid, job_r, out_r, proto)
    _, status = os.waitpid(pid, 0)
    send(proto, "exit", pid=pid, returncode=os.waitstatus_to_exitcode(status))


def _relay(pid: int, job_r: int, out_r: int, proto: IO[bytes]) -> None:
    """Forward the child's protocol lines (whole lines only) and its output until the child ends.

    Everything goes through the zygote's one protocol pipe, so the pool sees
    output, progress and the exit status in order, per job.
    """
    try:
        waiter: int | None = os.pidfd_open(pid)
    except (AttributeError, OSError):
        waiter = None  # then poll
    selector = selectors.DefaultSelector()
    for fd in (job_r, out_r) + ((waiter,) if waiter is not None else ()):
        selector.register(fd, selectors.EVENT_READ)
    pending = bytearray()

    def pump(fd: int) -> bool:
        chunk = os.read(fd, 65536)
        if fd == out_r and chunk:
            send(proto, "output", data=chunk.decode("utf-8", errors="replace"))
        elif chunk:
            pending.extend(chunk)
            *lines, rest = pending.split(b"\n")
            if len(rest) > LINE_LIMIT:  # no line is that long: pass it on broken, the pool refuses it
                lines, rest = [*lines, rest], b""
            for whole in lines:
                proto.write(_vetted(bytes(whole)) + b"\n")
            proto.flush()
            pending[:] = rest
        return bool(chunk)

    ended = False
    while not ended:
        for key, _ in selector.select(None if waiter is not None else 0.05):
            if key.fd == waiter:
                ended = True
            elif not pump(key.fd):
                selector.unregister(key.fd)
        ended = ended or os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    kill_group(pid)  # whatever it left running in its group
    for fd in (job_r, out_r):  # what it wrote before it ended; leftovers cannot block this
        os.set_blocking(fd, False)
        try:
            while pump(fd):
                pass
        except BlockingIOError:
            pass
        os.close(fd)
    if pending:
        proto.write(_vetted(bytes(pending)) + b"\n")  # an unfinished line: the pool refuses it
        proto.flush()
    selector.close()
    if waiter is not None:
        os.close(waiter)


def _vetted(line: bytes) -> bytes:
    """A child's line as it is when it is progress or a result; else one the pool refuses (so a
    child cannot forge the zygote's own lines: started, output, exit, ready)."""
    try:
        kind = msgspec.json.decode(line).get("kind")
    except (msgspec.DecodeError, AttributeError):
        kind = None
    return line if kind in ("progress", "result") else b'{"kind": "forged by the child"}'


def _child(line: bytes, proto: IO[bytes], scratch: str, harness: Any, data: Any, limits: Limits,
           device: str, disabled: set[str]) -> None:
    """One job in a forked child: the same walls as a single-use worker, then the job."""
    import torch

    namespaces = leave_namespaces()  # fine: a forked child has one thread
    os.chdir(scratch)
    os.environ.update(HOME=scratch, TMPDIR=scratch)
    tempfile.tempdir = None
    apply_limits(limits, device)
    torch.set_num_threads(limits.threads)
    job = msgspec.json.decode(line, type=harness.Job)
    walls = Walls(namespaces, audit_hook="audit_hook" not in disabled)
    send(proto, "result", result=run_one(job, proto, harness, data, device, walls, disabled))


def main() -> None:
    parser = argparse.ArgumentParser(prog="agentnas.trainer_daemon.worker")
    parser.add_argument("--task", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--proto-fd", type=int, required=True)
    parser.add_argument("--limits", required=True, help="Limits as JSON")
    parser.add_argument("--unsafe-disable", default="", help="test only: comma list of gate,audit_hook")
    parser.add_argument("--fork", action="store_true", help="fork server: one forked child per job (CPU only)")
    parser.add_argument("--jobs", type=int, default=1, help="jobs one process serves (not with --fork)")
    args = parser.parse_args()
    die_with_parent()  # a worker has a session of its own: it would outlive a killed pool
    proto = os.fdopen(args.proto_fd, "wb")
    try:
        if args.fork:
            zygote(args, proto)
        else:
            serve(args, proto, leave_namespaces())  # namespaces first, while the process has one thread
        proto.flush()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
