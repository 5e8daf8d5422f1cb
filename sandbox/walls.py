"""Walls the kernel keeps: no network, a read-only filesystem, death with the parent.

These hold against C code too (ctypes, extensions, programs the child starts),
which an audit hook never sees. They need root (CAP_SYS_ADMIN); where the OS
refuses them the functions say so and the caller reports the missing wall.

Order in a child: `die_with_parent` first; `leave_namespaces` while the process
still has one thread (unshare refuses a threaded process); `make_read_only`
once the trusted set-up has written what it needs.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
from collections.abc import Sequence
from typing import Any

__all__ = ["die_with_parent", "leave_namespaces", "make_read_only", "mount_points"]

CLONE_NEWNET, CLONE_NEWNS = 0x40000000, 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG = 1
SHM_OPTIONS = b"size=256m,mode=1777"


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _unshare(flag: int) -> bool:
    try:
        return _libc().unshare(flag) == 0
    except (OSError, AttributeError):
        return False


def leave_namespaces() -> dict[str, bool]:
    """A new, empty network namespace (no network at all, loopback included) and a private mount
    namespace, where the OS allows (root). Returns which of the two the process got.

    Must run while the process has one thread. The mount namespace only
    prepares `make_read_only`; until then the filesystem looks the same.
    """
    network = _unshare(CLONE_NEWNET)
    before = os.readlink("/proc/self/ns/mnt")
    mounts = _unshare(CLONE_NEWNS) and os.readlink("/proc/self/ns/mnt") != before
    if mounts:  # private first, so nothing done here propagates to the host's mounts
        mounts = _libc().mount(None, b"/", None, MS_REC | MS_PRIVATE, None) == 0
    return {"network_isolated": network, "mount_namespace": mounts}


def mount_points() -> list[str]:
    """Every mount point this process sees, in /proc/self/mountinfo order."""
    points = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            raw = line.split()[4]  # spaces and the like are octal escapes there
            points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), raw))
    return points


def _bind_to_itself(libc: Any, path: str) -> bool:
    return libc.mount(path.encode(), path.encode(), None, MS_BIND | MS_REC, None) == 0


def _remount_read_only(libc: Any, path: str) -> bool:
    return libc.mount(None, path.encode(), None, MS_BIND | MS_REMOUNT | MS_RDONLY, None) == 0


def make_read_only(writable: Sequence[str], *, read_only: Sequence[str] = (),
                   private_shm: bool = False) -> tuple[bool, tuple[str, ...]]:
    """Every mount read-only in this process's own mount namespace, except the `writable` folders.

    Call it after `leave_namespaces` gave a mount namespace. Each writable
    folder is bind-mounted onto itself first, which makes it a mount of its
    own that keeps write access (re-enter a folder you are in, with chdir, to
    write through it). Folders in `read_only` get a read-only mount of their
    own whatever happens to the rest; with `private_shm` a fresh, empty
    /dev/shm (multiprocessing and joblib want one) stays writable and dies with
    the namespace. Returns (every mount made read-only, the folders left
    writable). Catches what an audit hook cannot see: files that C code opens.
    """
    libc = _libc()
    for path in writable:
        if not _bind_to_itself(libc, path):
            return False, tuple(writable)
    kept = list(writable)
    if private_shm and os.path.isdir("/dev/shm") and libc.mount(
            b"tmpfs", b"/dev/shm", b"tmpfs", MS_NOSUID | MS_NODEV, SHM_OPTIONS) == 0:
        kept.append("/dev/shm")
    for path in read_only:
        _bind_to_itself(libc, path)
        _remount_read_only(libc, path)
    ok = True
    for point in mount_points():
        if point not in kept:
            ok &= _remount_read_only(libc, point)
    return ok, tuple(kept)


def die_with_parent(parent: int | None = None) -> None:
    """A child in a session or group of its own outlives a killed parent otherwise: ask the
    kernel to SIGKILL it when the parent dies (Linux prctl PR_SET_PDEATHSIG). Exits at once
    when the parent (`parent`, if given) is already gone."""
    try:
        _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1 or (parent is not None and os.getppid() != parent):  # it died before prctl
        os._exit(1)
