"""Resource limits: CPU time, memory, file size, process count, no core files.

Limits are set from inside the child, after its trusted start-up, relative to
what it uses then: "`cpu_s` more seconds", "`address_space_mb` more address
space", so imports made before the limits do not eat the budget. A child cannot
raise them again (the audit hook refuses setrlimit; unprivileged code cannot
raise a hard limit anyway).

Process count has two walls. RLIMIT_NPROC counts every thread of the user, and
the kernel exempts root; so where the child runs as root, a pids cgroup (made
by the parent, joined by the child, removed by the parent) caps the tasks of
the sandbox alone, where the OS gives a writable pids hierarchy.
"""

from __future__ import annotations

import os
import resource
import signal
import time
from pathlib import Path

__all__ = ["CPU_HARD_GRACE_S", "apply_rlimits", "cpu_used_s", "join_cgroup", "make_task_cgroup",
           "remove_cgroup", "status_bytes", "user_tasks"]

MB = 2**20
CPU_HARD_GRACE_S = 5  # SIGXCPU at the soft CPU limit, SIGKILL this much later


def status_bytes(field: str) -> int:
    """A size from /proc/self/status, e.g. VmSize (address space) or VmData (private writable memory)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    return 0


def user_tasks(uid: int) -> int:
    """Threads of every process of `uid`: what RLIMIT_NPROC counts."""
    total = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/status") as status:
                    fields = dict(line.split(":", 1) for line in status if ":" in line)
                if int(fields["Uid"].split()[0]) == uid:
                    total += int(fields["Threads"])
            except (OSError, KeyError, ValueError):
                continue  # the process ended meanwhile
    return total


def cpu_used_s() -> float:
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def apply_rlimits(*, cpu_s: float, file_mb: float, cpu_hard_s: float | None = None, nproc: int | None = None,
                  address_space_mb: float | None = None, data_mb: float | None = None) -> None:
    """Limits from now on, for this process and what it starts.

    - CPU: `cpu_s` more seconds (SIGXCPU), and SIGKILL `CPU_HARD_GRACE_S` after `cpu_hard_s`
      more (default `cpu_s`; a process serving several jobs has its soft limit moved per job);
    - files: none larger than `file_mb`; no core files;
    - `nproc`: threads and processes it may add to what its user runs now (None: no limit;
      root is exempt in any case, see `make_task_cgroup`);
    - memory: `address_space_mb` more address space (RLIMIT_AS), `data_mb` more private
      writable memory (RLIMIT_DATA, which CUDA's reserved ranges do not count against).
    """
    used = cpu_used_s()
    hard = cpu_s if cpu_hard_s is None else cpu_hard_s
    resource.setrlimit(resource.RLIMIT_CPU, (int(used + cpu_s) + 1, int(used + hard) + 1 + CPU_HARD_GRACE_S))
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(file_mb * MB),) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if nproc is not None:
        tasks = user_tasks(os.getuid()) + nproc
        resource.setrlimit(resource.RLIMIT_NPROC, (tasks, tasks))
    for limit, field, mb in ((resource.RLIMIT_AS, "VmSize", address_space_mb),
                             (resource.RLIMIT_DATA, "VmData", data_mb)):
        if mb is not None:
            cap = status_bytes(field) + int(mb * MB)
            resource.setrlimit(limit, (cap, cap))


# ---------------------------------------------------------------- pids cgroup (root)


def _cgroup_folder(mount_root: str, point: str, path: str) -> Path:
    """Where the cgroup `path` lies under a cgroup mount (which may show a subtree only)."""
    inside = path[len(mount_root):] if mount_root != "/" and path.startswith(mount_root) else path
    return Path(point + inside)


def _pids_hierarchy() -> Path | None:
    """This process's own cgroup in a pids hierarchy under which one may make a child with a
    pids.max: cgroup v1's pids mount, or a cgroup v2 whose subtree already has the pids controller."""
    own = {}
    with open("/proc/self/cgroup") as cgroups:
        for line in cgroups:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            own[controllers] = path
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            mount_root, point = fields[3], fields[4]
            fstype, _source, options = fields[fields.index("-") + 1:][:3]
            if fstype == "cgroup" and "pids" in options.split(","):
                key = next((c for c in own if "pids" in c.split(",")), None)
                if key is not None:
                    return _cgroup_folder(mount_root, point, own[key])
            elif fstype == "cgroup2" and "" in own:
                unified = _cgroup_folder(mount_root, point, own[""])
                try:
                    if "pids" in (unified / "cgroup.subtree_control").read_text().split():
                        return unified
                except OSError:
                    pass
    return None


def make_task_cgroup(name: str, max_tasks: int) -> str | None:
    """A fresh pids cgroup `agentnas-<name>` beside this process's own that holds at most
    `max_tasks` tasks (threads count), or None where the OS gives none (not root, no pids
    hierarchy, a read-only /sys/fs/cgroup). The parent makes it; the child joins it."""
    try:
        parent = _pids_hierarchy()
        if parent is None:
            return None
        folder = parent / f"agentnas-{name}"
        folder.mkdir()
        try:
            (folder / "pids.max").write_text(str(max_tasks))
        except OSError:
            folder.rmdir()
            return None
        return str(folder)
    except (OSError, ValueError, IndexError):
        return None


def join_cgroup(folder: str) -> bool:
    """Move this process (and so all it starts later) into the cgroup `folder`."""
    try:
        with open(os.path.join(folder, "cgroup.procs"), "w") as procs:
            procs.write(str(os.getpid()))
        return True
    except OSError:
        return False


def remove_cgroup(folder: str, wait_s: float = 2.0) -> None:
    """Kill every process left in the cgroup (also any that left the process group), then remove it."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            pids = [int(p) for p in Path(folder, "cgroup.procs").read_text().split()]
        except OSError:
            return  # gone already
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            os.rmdir(folder)
            return
        except OSError:
            if time.monotonic() > deadline:
                return  # still busy: left for the host to clean up
            time.sleep(0.01)
