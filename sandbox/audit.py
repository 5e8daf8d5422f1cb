"""The audit hook: the wall inside the interpreter, one factory for every policy.

An audit hook (PEP 578) sees what Python code asks the runtime to do (open a
file, start a program, connect a socket) and refuses by raising; once installed
it cannot be removed. It does not see what C code does on its own (ctypes,
extensions, programs started), so it backs the kernel's walls (walls.py,
limits.py) up rather than replacing them, and is the only wall where the OS
gives no namespaces.

`make_audit_hook(policy)` builds the hook; the two policies in use:
- `strict_policy` (model code in the trainer's workers): refuses programs,
  forks, signals, sockets, ctypes, sqlite3, URL and mail clients, object-graph
  introspection; reads only inside the given roots, writes only inside the
  writable ones;
- `exploration_policy` (the Data Explorer's scripts): reads anywhere but the
  hidden folders (the parent's home: credentials) and other processes' /proc
  entries; writes only in scratch; Unix sockets only inside scratch, no IP;
  signals only to its own process group; starting programs only where a
  network namespace holds them (a new program does not carry this hook).
Both refuse raising resource limits, writes outside the writable folders, and
opening a directory (a directory descriptor would allow writes relative to it).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from typing import Any

import msgspec

__all__ = ["AuditPolicy", "exploration_policy", "make_audit_hook", "python_roots", "strict_policy"]

# Refused outright, by event name or prefix (an exact name is its own prefix here).
PROGRAMS = ("os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.startfile", "subprocess.Popen", "pty.spawn")
FORKS = ("os.fork", "os.forkpty")
SIGNALS = ("os.kill", "os.killpg", "signal.pthread_kill")
LIMITS = ("resource.setrlimit", "resource.prlimit")
INTROSPECTION = ("gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys.remote_exec")
FOREIGN = ("socket.", "ctypes.", "sqlite3.", "urllib.", "http.", "ftplib.", "smtplib.", "imaplib.", "poplib.",
           "nntplib.", "telnetlib.", "webbrowser.")

# Events that name paths: event -> (positions of paths it writes, of paths it reads, of dir_fd arguments).
PATH_EVENTS: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {
    "os.remove": ((0,), (), (1,)), "os.rmdir": ((0,), (), (1,)), "os.mkdir": ((0,), (), (2,)),
    "os.chmod": ((0,), (), (2,)), "os.chown": ((0,), (), (3,)), "os.rename": ((0, 1), (), (2, 3)),
    "os.link": ((0, 1), (), (2, 3)),  # a hard link writes through to its source
    "os.symlink": ((1,), (0,), (2,)), "os.utime": ((0,), (), (3,)), "os.truncate": ((0,), (), ()),
    "os.mkfifo": ((0,), (), (2,)), "os.mknod": ((0,), (), (3,)), "os.setxattr": ((0,), (), ()),
    "os.removexattr": ((0,), (), ()), "os.listdir": ((), (0,), ()), "os.scandir": ((), (0,), ()),
    "glob.glob": ((), (0,), ()), "shutil.rmtree": ((0,), (), ()), "shutil.copyfile": ((1,), (0,), ()),
    "shutil.copytree": ((1,), (0,), ()), "shutil.move": ((0, 1), (), ()),
    "shutil.unpack_archive": ((1,), (0,), ()), "shutil.make_archive": ((0,), (2,), ()),
}
SOCKET_ADDRESSES = frozenset({"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"})
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
WRITABLE_FILES = ("/dev/null",)  # writable wherever it is: it keeps nothing
_PROC_PID = re.compile(r"^/proc/(\d+)(/|$)")


class AuditPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """What one hook allows. Paths are real paths (symlinks resolved)."""

    writable: tuple[str, ...]  # the only folders written to
    readable: tuple[str, ...] = ()  # read even inside `hidden`; unless `read_anywhere`, the only ones read
    read_anywhere: bool = False  # reads outside `readable` pass, unless inside `hidden`
    hidden: tuple[str, ...] = ()  # folders never read (unless inside `readable`)
    refused: tuple[str, ...] = LIMITS  # event names and prefixes refused outright
    reasons: tuple[tuple[str, str], ...] = ()  # (event prefix, why): said with an outright refusal
    open_descriptors: bool = False  # open() of an existing descriptor passes (checked when it was opened)
    word: str = "blocked"  # "sandbox <word> <what>": the callers' tests and logs spell it their way


def strict_policy(writable: tuple[str, ...], readable: tuple[str, ...]) -> AuditPolicy:
    """Model code: no processes, signals, sockets or foreign code; reads only in `readable`."""
    return AuditPolicy(writable=writable, readable=readable,
                       refused=PROGRAMS + FORKS + SIGNALS + LIMITS + INTROSPECTION + FOREIGN)


def exploration_policy(writable: tuple[str, ...], readable: tuple[str, ...], hidden: tuple[str, ...], *,
                       programs: bool) -> AuditPolicy:
    """Exploration code: reads anything but `hidden` (`readable` wins over it); `programs` False
    refuses starting programs (right where no network namespace holds them)."""
    why = "(no network namespace; a new program would run without this hook)"
    return AuditPolicy(writable=writable, readable=readable, read_anywhere=True, hidden=hidden,
                       refused=LIMITS + (() if programs else PROGRAMS),
                       reasons=() if programs else tuple((event, why) for event in PROGRAMS),
                       open_descriptors=True, word="refused")


def python_roots() -> tuple[str, ...]:
    """Where Python and its packages live: prefixes, sys.path, and the folders an editable
    install maps agentnas packages from (they may lie outside sys.path)."""
    candidates = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *sys.path]
    namespace = __name__.partition(".")[0]
    for name, module in list(sys.modules.items()):
        if name.startswith(namespace):
            candidates.extend(getattr(module, "__path__", []))
    return tuple(sorted({os.path.realpath(p) for p in candidates if p and os.path.exists(p)}))


def _real(path: Any) -> str:
    return os.path.realpath(os.fsdecode(os.fspath(path)))


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def _in_own_group(pid: int, own: int) -> bool:
    """Whether kill(pid) reaches only processes of the group `own` (0: the caller's own group)."""
    if pid == 0 or pid == -own:
        return True
    if pid <= 0:
        return False
    try:
        return os.getpgid(pid) == own
    except OSError:
        return False


def make_audit_hook(policy: AuditPolicy) -> Callable[[str, tuple], None]:
    """The hook for `policy`: install it with sys.addaudithook (for good)."""
    writable = policy.writable
    readable = policy.readable + writable
    refused = policy.refused

    def refuse(event: str, detail: Any = "") -> None:
        raise PermissionError(f"sandbox {policy.word} {event}{f' {detail!r}' if detail != '' else ''}")

    def check_read(what: str, path: str) -> None:
        match = _PROC_PID.match(path)
        if match and int(match.group(1)) != os.getpid():
            refuse("reading another process", path)
        if _under(path, readable):
            return
        if not policy.read_anywhere:
            refuse(what, path)
        if _under(path, policy.hidden):
            refuse("reading", path)

    def check_open(args: tuple) -> None:
        path, mode, flags = (tuple(args) + (None, None, None))[:3]
        if isinstance(path, int):
            if not policy.open_descriptors:
                refuse("open of a file descriptor", path)
            return
        real = _real(path)
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
        if writing and not (_under(real, writable) or real in WRITABLE_FILES):
            refuse("open for writing", real)
        if not writing:
            check_read("open", real)
            if os.path.isdir(real):
                refuse("open of a directory", real)  # a directory descriptor would allow writes relative to it

    def check_paths(event: str, args: tuple) -> None:
        written, read, dir_fds = PATH_EVENTS[event]
        if any(i < len(args) and args[i] not in (None, -1) for i in dir_fds):
            refuse(event, "with dir_fd")
        for i in written:
            if i < len(args) and args[i] is not None and (
                    isinstance(args[i], int) or not _under(_real(args[i]), writable)):
                refuse(event, args[i])
        for i in read:
            if i < len(args) and isinstance(args[i], (str, bytes, os.PathLike)):
                check_read(event, _real(args[i]))

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            check_open(args)
        elif event.startswith(refused):
            refuse(event, next((why for prefix, why in policy.reasons if event.startswith(prefix)), ""))
        elif event in PATH_EVENTS:
            check_paths(event, args)
        elif event in SOCKET_ADDRESSES:
            address = args[1] if len(args) > 1 else None
            if not isinstance(address, (str, bytes, os.PathLike)) or not _under(_real(address), writable):
                refuse(event, address)  # IP, abstract or foreign Unix sockets
        elif event == "os.kill" and not _in_own_group(args[0], os.getpgrp()):
            refuse(event, args[0])
        elif event == "os.killpg" and args[0] not in (0, os.getpgrp()):
            refuse(event, args[0])

    return hook
