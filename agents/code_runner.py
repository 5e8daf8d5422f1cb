"""Runs one piece of untrusted data-exploration code in a fresh sandboxed Python process.

The Data Explorer (PROTOCOL.md, Phase 1) writes a script each turn and runs it
with `run_code`. The script is saved as `explore.py` in a fresh scratch folder
and run with runpy (so tracebacks name its lines) by a child process that:

- is `python -I -X utf8 -m agentnas.agents.code_runner SPEC`: isolated mode
  (no PYTHON* variables, no user site, no current folder on sys.path), in its
  own process group, stdout and stderr on one pipe, stdin empty;
- gets an allow-listed environment (`child_env`): no API keys or other
  secrets; HOME and TMPDIR are the scratch folder; the data folder's absolute
  path is in AGENTNAS_DATA (the variable is absent when there is no data);
- works in the scratch folder, which is removed afterwards;
- as root: leaves the network namespace (no network at all, loopback
  included) and gets a private mount namespace in which every mount is
  read-only except the scratch folder and a private, empty /dev/shm, so the
  data folder is read-only and nothing outside scratch can be written;
- has an audit hook as a second wall, and the only one where namespaces are
  not available: it refuses IP sockets and Unix sockets outside scratch,
  writes outside scratch, reads of other processes' /proc entries and of the
  parent's home (unless Python or the data live there), raising resource
  limits, and (without a network namespace) starting new programs, which would
  not carry the hook. C code (ctypes, extensions) does not pass through an
  audit hook, so it backs the namespaces up rather than replacing them;
- has resource limits: address space and data (`memory_mb` above the bare
  interpreter; imports count: torch alone reserves 1-2 GB), CPU time, 64 MB
  per file, no core files, and for non-root users a process count;
- is killed with its whole process group at the wall-clock deadline.

Outcomes: exit 0 -> "ok"; wall clock or CPU limit -> "timeout"; MemoryError,
an allocator's out-of-memory message, or SIGKILL from outside (the host's OOM
killer) -> "oom"; any other failure -> "error" with the traceback in the
output. Processes that leave the group (setsid) are beyond reach of the kill;
under a network and mount namespace they still have neither network nor
write access.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import pwd
import re
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

__all__ = ["CodeRun", "child_env", "run_code"]

SCRIPT_NAME = "explore.py"
THREADS = 2  # OMP / MKL / OpenBLAS threads of the child
FILE_MB = 64.0  # largest file the code may write
NPROC_EXTRA = 64  # processes/threads the code may add (RLIMIT_NPROC; root is exempt)
CPU_HARD_GRACE_S = 5  # SIGXCPU at the soft CPU limit, SIGKILL this much later
OOM_EXIT = 86  # exit status the child uses for a MemoryError
DRAIN_GRACE_S = 2.0  # after the group is killed, the pipe should close at once
MARKER_ROOM = 40  # characters reserved for the truncation marker

# The only variables the child inherits (plus LC_*); HOME, TMPDIR and the rest are set, not inherited.
PASSED_ENV = ("PATH", "LANG", "TZ")
# Belt and braces over the allow-list: a name with one of these is never passed.
SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL", "AWS_", "ANTHROPIC", "OPENAI", "NATS")
OOM_MARKERS = ("MemoryError", "can't allocate memory", "Cannot allocate memory", "out of memory",
               "OutOfMemoryError")

CLONE_NEWNET, CLONE_NEWNS = 0x40000000, 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
ST_RDONLY = 1


class CodeRun(msgspec.Struct, frozen=True, kw_only=True):
    """What one run of exploration code gave."""

    status: Literal["ok", "error", "timeout", "oom"]
    output: str  # stdout+stderr interleaved; head and tail kept, the middle cut with a marker
    seconds: float  # wall clock, interpreter start included
    returncode: int | None  # negative: killed by that signal
    warnings: tuple[str, ...] = ()  # walls the OS did not allow (the audit hook stood in)


class _Spec(msgspec.Struct, frozen=True, kw_only=True):
    """What the parent tells the child (one JSON argument)."""

    scratch: str
    data_dir: str | None
    memory_mb: float
    cpu_s: float
    file_mb: float
    report_fd: int
    hidden: tuple[str, ...]  # folders the code may not read (the parent's home and agentnas home)
    namespaces: bool = True  # test seam: False shows the audit hook alone


def child_env(parent: Mapping[str, str], *, scratch: Path, data_dir: Path | None) -> dict[str, str]:
    """The complete environment of the child: an allow-list of the parent's, plus fixed settings."""
    env = {name: value for name, value in parent.items()
           if (name in PASSED_ENV or name.startswith("LC_"))
           and not any(marker in name.upper() for marker in SECRET_MARKERS)}
    threads = str(THREADS)
    env.update({
        "HOME": str(scratch), "TMPDIR": str(scratch), "JOBLIB_TEMP_FOLDER": str(scratch),
        "MPLBACKEND": "Agg", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads, "NUMEXPR_NUM_THREADS": threads,
        "MALLOC_ARENA_MAX": "2",  # each glibc arena reserves 64 MB of address space
    })
    if data_dir is not None:
        env["AGENTNAS_DATA"] = str(data_dir)
    return env


# ---------------------------------------------------------------- parent side


_CONTINUATION = bytes(range(0x80, 0xC0))  # UTF-8 continuation bytes: not counted as characters


class _HeadTail(asyncio.Protocol):
    """Reads the child's output pipe as it comes; keeps its first and last bytes, counts the rest."""

    def __init__(self, chars: int) -> None:
        self.cap = 4 * max(chars, 1)  # bytes enough for `chars` characters of UTF-8
        self.head, self.tail = bytearray(), bytearray()
        self.dropped_chars = 0
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        room = self.cap - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        self.tail += data
        excess = len(self.tail) - self.cap
        if excess > 0:
            while excess < len(self.tail) and 0x80 <= self.tail[excess] < 0xC0:
                excess += 1  # never start the tail inside a character: its lead byte is gone
            self.dropped_chars += len(bytes(self.tail[:excess]).translate(None, _CONTINUATION))
            del self.tail[:excess]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def text(self, chars: int) -> str:
        """At most `chars` characters: all of it, or head + "... [N characters cut] ..." + tail."""
        if not self.dropped_chars:
            whole = (self.head + self.tail).decode("utf-8", errors="replace")
            if len(whole) <= chars:
                return whole
            head, tail = whole, whole
            total = len(whole)
        else:
            head = self.head.decode("utf-8", errors="replace")
            tail = self.tail.decode("utf-8", errors="replace")
            total = len(head) + self.dropped_chars + len(tail)
        budget = max(chars - MARKER_ROOM, 0)
        keep_head = budget // 3  # the end matters more: tracebacks and results are printed last
        keep_tail = budget - keep_head
        cut = total - keep_head - keep_tail
        return f"{head[:keep_head]}\n... [{cut} characters cut] ...\n{tail[len(tail) - keep_tail:]}"


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)  # the child leads its own group (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


def _status(returncode: int | None, timed_out: bool, output: str) -> Literal["ok", "error", "timeout", "oom"]:
    if timed_out or returncode == -signal.SIGXCPU:
        return "timeout"
    if returncode == 0:
        return "ok"
    if returncode in (OOM_EXIT, -signal.SIGKILL) or any(marker in output[-2000:] for marker in OOM_MARKERS):
        return "oom"
    return "error"


def _note(returncode: int | None, timed_out: bool, timeout_s: float, cpu_s: float) -> str:
    """A line for the output that says why the process ended, where its own output cannot."""
    if timed_out:
        return f"[sandbox] wall-clock limit of {timeout_s:g} s exceeded; process group killed"
    if returncode == -signal.SIGXCPU:
        return f"[sandbox] CPU time limit of {cpu_s:g} s exceeded"
    if returncode == -signal.SIGKILL:
        return "[sandbox] killed by SIGKILL (most likely the host's out-of-memory killer)"
    if returncode is not None and returncode < 0:
        return f"[sandbox] killed by {signal.Signals(-returncode).name}"
    return ""


def _hidden_roots(parent: Mapping[str, str]) -> tuple[str, ...]:
    """Folders likely to hold credentials: the parent's home and the agentnas home."""
    roots = {parent.get("HOME", ""), parent.get("AGENTNAS_HOME", "")}
    try:
        roots.add(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:
        pass
    return tuple(sorted(os.path.realpath(r) for r in roots if r and r != "/"))


async def run_code(code: str, *, data_dir: Path | None, scratch_root: Path, timeout_s: float = 120.0,
                   memory_mb: float = 8192.0, output_chars: int = 5000, cpu_s: float | None = None) -> CodeRun:
    """Run `code` once in a fresh sandboxed process; every way it can end is a CodeRun.

    `data_dir` is read-only to the code, which finds it in $AGENTNAS_DATA;
    `cpu_s` defaults to what THREADS threads can use in `timeout_s`.
    """
    return await _run_in_sandbox(code, data_dir=data_dir, scratch_root=scratch_root, timeout_s=timeout_s,
                                 memory_mb=memory_mb, output_chars=output_chars, cpu_s=cpu_s)


async def _run_in_sandbox(code: str, *, data_dir: Path | None, scratch_root: Path, timeout_s: float,
                          memory_mb: float, output_chars: int, cpu_s: float | None,
                          namespaces: bool = True) -> CodeRun:
    if timeout_s <= 0 or memory_mb <= 0 or output_chars <= 0 or (cpu_s is not None and cpu_s <= 0):
        raise ValueError("timeout_s, memory_mb, output_chars and cpu_s must be positive")
    data = None
    if data_dir is not None:
        data = Path(data_dir).resolve()
        if not data.is_dir():
            raise ValueError(f"data folder not found: {data_dir}")
    cpu = cpu_s if cpu_s is not None else timeout_s * THREADS + 1
    Path(scratch_root).mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="explore-", dir=scratch_root)).resolve()
    report_r, report_w = os.pipe()
    out_r, out_w = os.pipe()
    transport: asyncio.BaseTransport | None = None
    try:
        (scratch / SCRIPT_NAME).write_text(code, encoding="utf-8")
        spec = _Spec(scratch=str(scratch), data_dir=str(data) if data else None, memory_mb=memory_mb,
                     cpu_s=cpu, file_mb=FILE_MB, report_fd=report_w, hidden=_hidden_roots(os.environ),
                     namespaces=namespaces)
        collector = _HeadTail(output_chars)
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: collector, open(out_r, "rb", buffering=0, closefd=True))
        out_r = -1  # the transport owns it now
        started = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-X", "utf8", "-m", "agentnas.agents.code_runner",
                msgspec.json.encode(spec).decode(),
                stdin=asyncio.subprocess.DEVNULL, stdout=out_w, stderr=out_w, pass_fds=(report_w,),
                start_new_session=True, cwd=scratch, env=child_env(os.environ, scratch=scratch, data_dir=data))
        finally:
            os.close(out_w)  # the child holds its copies; EOF then means the whole group is gone
            os.close(report_w)
            out_w = report_w = -1
        timed_out = False
        try:
            try:
                await asyncio.wait_for(proc.wait(), timeout_s)
            except TimeoutError:
                timed_out = True
        finally:  # also on cancellation: nothing the code started outlives the call
            _kill_group(proc.pid)
            await proc.wait()
            try:
                await asyncio.wait_for(collector.closed, DRAIN_GRACE_S)
            except TimeoutError:
                pass  # someone left the group holding the pipe; keep what arrived
        seconds = time.monotonic() - started
        report = _read_report(report_r)
    finally:
        if transport is not None:
            transport.close()
        for fd in (out_r, out_w, report_r, report_w):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(scratch, ignore_errors=True)
    output = collector.text(output_chars)
    status = _status(proc.returncode, timed_out, output)
    if note := _note(proc.returncode, timed_out, timeout_s, cpu):
        output += ("" if not output or output.endswith("\n") else "\n") + note
    return CodeRun(status=status, output=output, seconds=round(seconds, 3), returncode=proc.returncode,
                   warnings=report)


def _read_report(fd: int) -> tuple[str, ...]:
    """The child's one line about its walls; every writer is closed by now, so this cannot block."""
    data = os.read(fd, 65536)
    try:
        return tuple(json.loads(data)["warnings"])
    except (ValueError, KeyError, TypeError):
        return ("sandbox: the child did not report its walls (it failed before the code ran)",)


# ---------------------------------------------------------------- child side: walls


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _leave_namespaces() -> tuple[bool, bool]:
    """A new, empty network namespace and a private mount namespace, where the OS allows (root).

    Must run while the process has one thread.
    """
    libc = _libc()
    network = libc.unshare(CLONE_NEWNET) == 0
    before = os.readlink("/proc/self/ns/mnt")
    mounts = libc.unshare(CLONE_NEWNS) == 0 and os.readlink("/proc/self/ns/mnt") != before
    if mounts:  # private first, so nothing done here propagates to the host's mounts
        mounts = libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) == 0
    return network, mounts


def _mount_points() -> list[str]:
    points = []
    for line in open("/proc/self/mountinfo"):
        raw = line.split()[4]  # spaces and the like are octal escapes there
        points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), raw))
    return points


def _close_filesystem(scratch: str, data_dir: str | None) -> tuple[bool, list[str]]:
    """Every mount read-only in this mount namespace except scratch and a private /dev/shm.

    Returns (all mounts read-only, writable folders). Scratch is bind-mounted
    onto itself first, which makes it a mount of its own that stays writable.
    """
    libc = _libc()

    def read_only(path: str) -> bool:
        return libc.mount(None, path.encode(), None, MS_BIND | MS_REMOUNT | MS_RDONLY, None) == 0

    if libc.mount(scratch.encode(), scratch.encode(), None, MS_BIND | MS_REC, None) != 0:
        return False, []
    writable = [scratch]
    # multiprocessing and joblib want a writable /dev/shm; a fresh tmpfs dies with the namespace
    if os.path.isdir("/dev/shm") and libc.mount(b"tmpfs", b"/dev/shm", b"tmpfs", MS_NOSUID | MS_NODEV,
                                                 b"size=256m,mode=1777") == 0:
        writable.append("/dev/shm")
    if data_dir:  # its own read-only mount, whatever happens to the rest
        libc.mount(data_dir.encode(), data_dir.encode(), None, MS_BIND | MS_REC, None)
        read_only(data_dir)
    ok = True
    for point in _mount_points():
        if point not in writable:
            ok &= read_only(point)
    return ok, writable


def _user_tasks(uid: int) -> int:
    """Threads of every process of `uid`: what RLIMIT_NPROC counts."""
    total = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                fields = dict(line.split(":", 1) for line in open(f"/proc/{entry.name}/status") if ":" in line)
                if int(fields["Uid"].split()[0]) == uid:
                    total += int(fields["Threads"])
            except (OSError, KeyError, ValueError):
                continue  # the process ended meanwhile
    return total


def _status_bytes(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def _apply_limits(spec: _Spec) -> None:
    mb = 2**20
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu = int(used.ru_utime + used.ru_stime + spec.cpu_s) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + CPU_HARD_GRACE_S))
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(spec.file_mb * mb),) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for limit, field in ((resource.RLIMIT_AS, "VmSize"), (resource.RLIMIT_DATA, "VmData")):
        cap = _status_bytes(field) + int(spec.memory_mb * mb)  # above the bare interpreter
        resource.setrlimit(limit, (cap, cap))
    if os.getuid() != 0:
        nproc = _user_tasks(os.getuid()) + NPROC_EXTRA
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))


WRITE_EVENTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {  # path positions, dir_fd positions
    "os.remove": ((0,), (1,)), "os.rmdir": ((0,), (1,)), "os.mkdir": ((0,), (2,)),
    "os.chmod": ((0,), (2,)), "os.chown": ((0,), (3,)), "os.rename": ((0, 1), (2, 3)),
    "os.link": ((0, 1), (2, 3)), "os.symlink": ((1,), (2,)), "os.utime": ((0,), (3,)),
    "os.truncate": ((0,), ()), "os.mkfifo": ((0,), (2,)), "os.mknod": ((0,), (3,)),
    "shutil.rmtree": ((0,), ()), "shutil.move": ((0, 1), ()), "shutil.copyfile": ((1,), ()),
    "shutil.copytree": ((1,), ()),
}
SOCKET_EVENTS = frozenset({"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"})
PROGRAM_PREFIXES = ("os.exec", "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen", "pty.spawn")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PROC_PID = re.compile(r"^/proc/(\d+)(/|$)")


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def _make_audit_hook(*, writable: tuple[str, ...], readable: tuple[str, ...], hidden: tuple[str, ...],
                     programs: bool) -> Callable[[str, tuple], None]:
    """The second wall. `readable` wins over `hidden`; `programs` False refuses starting programs.

    Open file descriptors pass: they were checked when they were opened
    (tempfile opens by path, then wraps the descriptor).
    """
    readable = readable + writable

    def refuse(event: str, detail: Any = "") -> None:
        raise PermissionError(f"sandbox refused {event}{f' {detail!r}' if detail != '' else ''}")

    def real(path: Any) -> str:
        return os.path.realpath(os.fsdecode(os.fspath(path)))

    def check_read(path: str) -> None:
        match = _PROC_PID.match(path)
        if match and int(match.group(1)) != os.getpid():
            refuse("reading another process", path)
        if _under(path, hidden) and not _under(path, readable):
            refuse("reading", path)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            if isinstance(path, int):
                return
            target = real(path)
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
            if writing and not _under(target, writable) and target != "/dev/null":
                refuse("writing", target)
            if not writing and os.path.isdir(target) and not _under(target, writable):
                refuse("opening a folder", target)  # a folder descriptor would allow writes relative to it
            check_read(target)
        elif event in SOCKET_EVENTS:
            address = args[1] if len(args) > 1 else None
            if not isinstance(address, (str, bytes, os.PathLike)) or not _under(real(address), writable):
                refuse(event, address)  # IP, abstract or foreign Unix sockets
        elif event in WRITE_EVENTS:
            paths, dir_fds = WRITE_EVENTS[event]
            if any(i < len(args) and args[i] not in (None, -1) for i in dir_fds):
                refuse(event, "with dir_fd")
            for i in paths:
                if i < len(args) and (isinstance(args[i], int) or not _under(real(args[i]), writable)):
                    refuse(event, args[i])
        elif event in ("os.listdir", "os.scandir") and args and isinstance(args[0], (str, bytes, os.PathLike)):
            check_read(real(args[0]))
        elif event in ("resource.setrlimit", "resource.prlimit"):
            refuse(event)
        elif not programs and event.startswith(PROGRAM_PREFIXES):
            refuse(event, "(no network namespace; a new program would run without this hook)")

    return hook


def _readable_roots(spec: _Spec) -> tuple[str, ...]:
    """Python and its packages, and the data: readable even inside a hidden folder."""
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *sys.path, spec.data_dir or ""]
    return tuple(sorted({os.path.realpath(p) for p in paths if p and os.path.exists(p)}))


def _die_with_parent() -> None:
    """The child has its own session, so it would outlive a killed agent: ask the kernel to
    SIGKILL it when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        _libc().prctl(1, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _run_script(path: str) -> int:
    """Run the script as __main__; print a traceback that starts at the script's own frames."""
    import runpy
    import traceback

    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit:
        raise
    except BaseException as exc:
        sys.stdout.flush()
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != path:
            tb = tb.tb_next  # runpy's and this module's frames say nothing about the code
        report = traceback.TracebackException(type(exc), exc, tb)
        # the audit hook's own frames (a refusal is raised inside it) say nothing either
        report.stack = traceback.StackSummary.from_list([f for f in report.stack if f.filename != __file__])
        print("".join(report.format()), end="", file=sys.stderr)
        sys.stderr.flush()
        return OOM_EXIT if isinstance(exc, MemoryError) else 1
    return 0


def _child_main() -> None:
    spec = msgspec.json.decode(sys.argv[1], type=_Spec)
    _die_with_parent()
    network, mounts = _leave_namespaces() if spec.namespaces else (False, False)  # first: one thread yet
    warnings = []
    if not network:
        warnings.append("sandbox: no network namespace; only an audit hook refuses sockets and new programs")
    read_only, writable = _close_filesystem(spec.scratch, spec.data_dir) if mounts else (False, [spec.scratch])
    if not read_only:
        warnings.append("sandbox: filesystem not read-only; only an audit hook refuses writes outside scratch")
    if spec.data_dir and not os.statvfs(spec.data_dir).f_flag & ST_RDONLY:
        warnings.append("sandbox: data folder not mounted read-only")
    os.chdir(spec.scratch)  # re-enter scratch through its writable bind mount
    _apply_limits(spec)
    sys.dont_write_bytecode = True
    sys.addaudithook(_make_audit_hook(writable=tuple(writable), readable=_readable_roots(spec),
                                      hidden=spec.hidden, programs=network))
    os.write(spec.report_fd, json.dumps({"warnings": warnings}).encode() + b"\n")
    os.close(spec.report_fd)  # before the code runs: it cannot write the report
    sys.stdout.reconfigure(line_buffering=True)  # a killed script's last lines still arrive, in order
    sys.exit(_run_script(SCRIPT_NAME))


if __name__ == "__main__":
    _child_main()
