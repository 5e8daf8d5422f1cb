"""Resource limits, each shown in a child process; the pids cgroup where the OS gives one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentnas.sandbox import limits
from agentnas.sandbox.limits import make_task_cgroup, remove_cgroup, status_bytes, user_tasks
from tests.sandbox.helpers import fork_many

pytestmark = pytest.mark.timeout(60)

LIMITED = """
import os, sys
from agentnas.sandbox.limits import apply_rlimits
apply_rlimits(cpu_s=1, file_mb=1, address_space_mb=256, nproc=None)
{body}
"""


def limited(body: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LIMITED.format(body=body)], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


def test_cpu_time_ends_in_sigxcpu(tmp_path):
    started = time.monotonic()
    done = limited("while True:\n    pass", tmp_path)
    assert done.returncode == -signal.SIGXCPU and time.monotonic() - started < 20


def test_files_past_the_size_limit_fail(tmp_path):
    done = limited("open('big.bin', 'wb').write(bytes(2 * 2**20))", tmp_path)
    assert done.returncode == 1 and "File too large" in done.stderr
    assert (tmp_path / "big.bin").stat().st_size <= 2**20


def test_memory_above_what_the_process_maps_now_fails(tmp_path):
    done = limited("x = bytearray(100 * 2**20)\nprint('fits', flush=True)\ny = bytearray(400 * 2**20)", tmp_path)
    assert done.stdout == "fits\n" and "MemoryError" in done.stderr


def test_no_core_files_and_the_limits_cannot_be_raised_again(tmp_path):
    done = limited("import resource\nprint(resource.getrlimit(resource.RLIMIT_CORE))\n"
                   "hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]\n"
                   "print(hard == 2**20)\n", tmp_path)
    assert done.stdout == "(0, 0)\nTrue\n", done.stderr


def forked_and_failed(output: str) -> tuple[int, int]:
    words = output.split()
    return int(words[words.index("FORKED") + 1]), int(words[words.index("FAILED") + 1])


@pytest.mark.skipif(os.getuid() == 0, reason="root is exempt from RLIMIT_NPROC (the pids cgroup covers it)")
def test_processes_beyond_the_count_fail():
    body = "from agentnas.sandbox.limits import apply_rlimits\napply_rlimits(cpu_s=10, file_mb=1, nproc=5)\n"
    done = subprocess.run([sys.executable, "-c", body + fork_many(20)], capture_output=True, text=True, timeout=60)
    forked, failed = forked_and_failed(done.stdout)
    assert forked <= 5 and failed >= 15


def test_status_and_task_counts():
    assert status_bytes("VmSize") > status_bytes("VmRSS") > 0
    assert status_bytes("NoSuchField") == 0
    assert user_tasks(os.getuid()) >= 1


def test_a_pids_cgroup_caps_the_tasks_of_its_members_and_is_removed_with_what_is_left():
    folder = make_task_cgroup(f"test-{os.getpid()}", 6)
    if folder is None:
        pytest.skip("no writable pids cgroup hierarchy here")
    try:
        code = "import sys\nfrom agentnas.sandbox.limits import join_cgroup\nassert join_cgroup(sys.argv[1])\n"
        done = subprocess.run([sys.executable, "-c", code + fork_many(20), folder], capture_output=True, text=True,
                              timeout=60)
        forked, failed = forked_and_failed(done.stdout)
        assert forked == 5 and failed == 15  # 6 tasks: the process itself and 5 more, root included
        escaped = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom agentnas.sandbox.limits import "
                                    "join_cgroup\njoin_cgroup(sys.argv[1])\nprint('in', flush=True)\ntime.sleep(60)",
                                    folder], stdout=subprocess.PIPE, start_new_session=True, text=True)
        assert escaped.stdout.readline() == "in\n"
    finally:
        remove_cgroup(folder)
    assert escaped.wait(10) == -signal.SIGKILL  # also what left the process group
    assert not Path(folder).exists()
    remove_cgroup(folder)  # gone already: nothing to do


def test_a_cgroup_is_found_under_a_mount_that_shows_a_subtree_only():
    assert limits._cgroup_folder("/", "/sys/fs/cgroup/pids", "/user/1") == Path("/sys/fs/cgroup/pids/user/1")
    assert limits._cgroup_folder("/docker/c1", "/sys/fs/cgroup/pids", "/docker/c1/job") == Path(
        "/sys/fs/cgroup/pids/job")
