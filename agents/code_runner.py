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
  writes outside scratch, opening folders, reads of other processes' /proc
  entries and of the parent's home (unless Python or the data live there),
  signals to processes outside its own group, raising resource limits, and
  (without a network namespace) starting new programs, which would not carry
  the hook. C code (ctypes, extensions) does not pass through an audit hook,
  so it backs the namespaces up rather than replacing them;
- has resource limits: address space and data (`memory_mb` above the bare
  interpreter; imports count: torch alone reserves 1-2 GB), CPU time, 64 MB
  per file, no core files, and a process count: RLIMIT_NPROC for other users,
  and for root (which RLIMIT_NPROC exempts) a pids cgroup where the OS gives
  a writable pids hierarchy;
- is killed with its whole process group at the wall-clock deadline.

The walls themselves live in `agentnas.sandbox` (shared with the trainer's
workers); this module picks the explorer's policy and classifies outcomes.

Outcomes: exit 0 -> "ok"; wall clock or CPU limit -> "timeout"; MemoryError,
an allocator's out-of-memory message, or SIGKILL from outside (the host's OOM
killer) -> "oom"; any other failure -> "error" with the traceback in the
output. Processes that leave the group (setsid) are beyond reach of the group
kill, but not of the pids cgroup's where there is one; under a network and
mount namespace they have neither network nor write access in any case.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import msgspec

from agentnas.sandbox import audit
from agentnas.sandbox.audit import exploration_policy, make_audit_hook, python_roots
from agentnas.sandbox.env import child_env as allow_listed_env
from agentnas.sandbox.limits import apply_rlimits, join_cgroup, make_task_cgroup, remove_cgroup
from agentnas.sandbox.process import HeadTail, kill_group, looks_oom
from agentnas.sandbox.walls import die_with_parent, leave_namespaces, make_read_only

__all__ = ["CodeRun", "child_env", "run_code"]

SCRIPT_NAME = "explore.py"
THREADS = 2  # OMP / MKL / OpenBLAS / numexpr threads of the child
FILE_MB = 64.0  # largest file the code may write
NPROC_EXTRA = 64  # processes/threads the code may add (RLIMIT_NPROC, or a pids cgroup for root)
OOM_EXIT = 86  # exit status the child uses for a MemoryError
DRAIN_GRACE_S = 2.0  # after the group is killed, the pipe should close at once
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
    cgroup: str | None = None  # a pids cgroup to join (made by the parent where the OS allows)
    namespaces: bool = True  # test seam: False shows the audit hook alone


def child_env(parent: Mapping[str, str], *, scratch: Path, data_dir: Path | None) -> dict[str, str]:
    """The complete environment of the child: the sandbox's allow-list, plus where the data is."""
    extra = {"JOBLIB_TEMP_FOLDER": str(scratch), "MPLBACKEND": "Agg"}
    if data_dir is not None:
        extra["AGENTNAS_DATA"] = str(data_dir)
    return allow_listed_env(parent, scratch=scratch, threads=THREADS, extra=extra)


# ---------------------------------------------------------------- parent side


def _status(returncode: int | None, timed_out: bool, output: str) -> Literal["ok", "error", "timeout", "oom"]:
    if timed_out or returncode == -signal.SIGXCPU:
        return "timeout"
    if returncode == 0:
        return "ok"
    if returncode in (OOM_EXIT, -signal.SIGKILL) or looks_oom(output[-2000:]):
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
    # root is exempt from RLIMIT_NPROC: a pids cgroup counts the child's processes instead
    cgroup = make_task_cgroup(scratch.name, NPROC_EXTRA + 1) if os.getuid() == 0 else None
    try:
        (scratch / SCRIPT_NAME).write_text(code, encoding="utf-8")
        spec = _Spec(scratch=str(scratch), data_dir=str(data) if data else None, memory_mb=memory_mb,
                     cpu_s=cpu, file_mb=FILE_MB, report_fd=report_w, hidden=_hidden_roots(os.environ),
                     cgroup=cgroup, namespaces=namespaces)
        collector = HeadTail(output_chars)
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
            kill_group(proc.pid)
            await proc.wait()
            try:
                await asyncio.wait_for(collector.closed, DRAIN_GRACE_S)
            except TimeoutError:
                pass  # someone left the group holding the pipe; keep what arrived
        seconds = time.monotonic() - started
        report = _read_report(report_r)
    finally:
        if cgroup is not None:
            remove_cgroup(cgroup)  # also what left the process group
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


# ---------------------------------------------------------------- child side


def _readable_roots(spec: _Spec) -> tuple[str, ...]:
    """Python and its packages, and the data: readable even inside a hidden folder."""
    paths = [*python_roots(), spec.data_dir or ""]
    return tuple(sorted({os.path.realpath(p) for p in paths if p and os.path.exists(p)}))


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
        ours = (__file__, audit.__file__)
        report.stack = traceback.StackSummary.from_list([f for f in report.stack if f.filename not in ours])
        print("".join(report.format()), end="", file=sys.stderr)
        sys.stderr.flush()
        return OOM_EXIT if isinstance(exc, MemoryError) else 1
    return 0


def _child_main() -> None:
    spec = msgspec.json.decode(sys.argv[1], type=_Spec)
    die_with_parent()  # the child has a session of its own: it would outlive a killed agent
    warnings = []
    counted = join_cgroup(spec.cgroup) if spec.cgroup else False  # before it starts anything
    if os.getuid() == 0 and not counted:
        warnings.append("sandbox: no pids cgroup and root is exempt from the process limit; "
                        "only the wall clock stops a fork bomb")
    namespaces = leave_namespaces() if spec.namespaces else {}  # first of the walls: one thread yet
    network, mounts = namespaces.get("network_isolated", False), namespaces.get("mount_namespace", False)
    if not network:
        warnings.append("sandbox: no network namespace; only an audit hook refuses sockets and new programs")
    read_only, writable = (make_read_only([spec.scratch], read_only=[spec.data_dir] if spec.data_dir else [],
                                          private_shm=True) if mounts else (False, (spec.scratch,)))
    if not read_only:
        warnings.append("sandbox: filesystem not read-only; only an audit hook refuses writes outside scratch")
    if spec.data_dir and not os.statvfs(spec.data_dir).f_flag & ST_RDONLY:
        warnings.append("sandbox: data folder not mounted read-only")
    os.chdir(spec.scratch)  # re-enter scratch through its writable bind mount
    # memory above the bare interpreter (imports count); root is exempt from RLIMIT_NPROC (see cgroup)
    apply_rlimits(cpu_s=spec.cpu_s, file_mb=spec.file_mb, address_space_mb=spec.memory_mb, data_mb=spec.memory_mb,
                  nproc=None if os.getuid() == 0 else NPROC_EXTRA)
    sys.dont_write_bytecode = True
    sys.addaudithook(make_audit_hook(exploration_policy(writable, _readable_roots(spec), spec.hidden,
                                                        programs=network)))
    os.write(spec.report_fd, json.dumps({"warnings": warnings}).encode() + b"\n")
    os.close(spec.report_fd)  # before the code runs: it cannot write the report
    sys.stdout.reconfigure(line_buffering=True)  # a killed script's last lines still arrive, in order
    sys.exit(_run_script(SCRIPT_NAME))


if __name__ == "__main__":
    _child_main()
