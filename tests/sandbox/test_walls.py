"""The kernel's walls, each shown in a child process: no network, read-only mounts, death with the parent.

Namespaces need root (CAP_SYS_ADMIN); where the OS refuses them the tests
check that the functions say so, and skip what only the namespaces give.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentnas.sandbox.walls import mount_points
from tests.sandbox.helpers import os_gives_namespaces

pytestmark = pytest.mark.timeout(60)


def child(code: str, *args: str) -> dict:
    """Run `code` in a fresh Python; it prints one JSON line last."""
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


WALLS = """
import ctypes, json, os, socket, struct, sys
from agentnas.sandbox.walls import leave_namespaces, make_read_only
writable, data, outside, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
given = leave_namespaces()
result = {"given": given}
if given["mount_namespace"]:
    result["made"] = make_read_only([writable], read_only=[data], private_shm=True)
    os.chdir(writable)  # through its writable bind mount
libc = ctypes.CDLL(None, use_errno=True)
def c_write(path):  # C code: what an audit hook never sees
    fd = libc.open(path.encode(), os.O_WRONLY | os.O_CREAT, 0o644)
    return -1 if fd < 0 and ctypes.get_errno() else 0, ctypes.get_errno() if fd < 0 else 0
result["writable"] = c_write(os.path.join(writable, "w.txt"))
result["data"] = c_write(os.path.join(data, "d.txt"))
result["outside"] = c_write(os.path.join(outside, "o.txt"))
result["shm"] = c_write("/dev/shm/agentnas-walls-test")
fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
address = struct.pack('=H', socket.AF_INET) + struct.pack('!H', port) + socket.inet_aton('127.0.0.1') + bytes(8)
result["connect"] = (libc.connect(fd, address, len(address)), ctypes.get_errno())
print(json.dumps(result))
"""


def test_namespaces_and_read_only_mounts_hold_against_c_code(tmp_path):
    writable, data, outside = tmp_path / "scratch", tmp_path / "data", tmp_path / "outside"
    for folder in (writable, data, outside):
        folder.mkdir()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        seen = child(WALLS, str(writable), str(data), str(outside), str(listener.getsockname()[1]))
        if not os_gives_namespaces():
            assert seen["given"] == {"network_isolated": False, "mount_namespace": False}
            pytest.skip("no namespaces here (they need root with CAP_SYS_ADMIN)")
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert seen["given"] == {"network_isolated": True, "mount_namespace": True}
    assert seen["made"] == [True, [str(writable), "/dev/shm"]]
    assert seen["writable"] == [0, 0] and (writable / "w.txt").exists()
    assert seen["data"] == seen["outside"] == [-1, errno.EROFS]
    assert seen["shm"] == [0, 0] and not Path("/dev/shm/agentnas-walls-test").exists()  # a private /dev/shm
    assert seen["connect"] == [-1, errno.ENETUNREACH]  # no network at all, loopback included
    assert list(data.iterdir()) == list(outside.iterdir()) == []
    (data / "host.txt").write_text("the host's mounts are untouched")  # the read-only mounts stayed private


def test_mount_points_are_read_with_escapes_decoded(tmp_path):
    points = mount_points()
    assert "/" in points and "/proc" in points
    if not os_gives_namespaces():
        return
    spaced = tmp_path / "a folder"
    spaced.mkdir()
    code = ("import json, sys\nfrom agentnas.sandbox.walls import leave_namespaces, make_read_only, mount_points\n"
            "leave_namespaces()\nmake_read_only([sys.argv[1]])\nprint(json.dumps(mount_points()))\n")
    assert str(spaced) in child(code, str(spaced))  # "\040" in mountinfo


ORPHAN = """
import os, sys, time
from agentnas.sandbox.walls import die_with_parent
if os.fork() == 0:  # the child: a session of its own, like a sandboxed worker
    os.setsid()
    die_with_parent()
    print(os.getpid(), flush=True)
    time.sleep(60)
    os._exit(0)
time.sleep(60)
"""


def test_a_child_dies_with_its_parent():
    parent = subprocess.Popen([sys.executable, "-c", ORPHAN], stdout=subprocess.PIPE, text=True)
    orphan = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while _running(orphan) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(orphan)


def test_a_child_whose_parent_is_already_gone_exits_at_once():
    code = "from agentnas.sandbox.walls import die_with_parent\nimport os\ndie_with_parent(os.getppid() + 1)\n" \
           "print('still here')\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "still here" not in done.stdout


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
