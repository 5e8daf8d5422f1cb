"""What the tests of the sandbox and of both its users share: the hostile corpus and how to watch the walls.

The corpus (tests/trainer_daemon/hostile/*.py, see its README) runs against the
trainer's workers (tests/trainer_daemon/test_sandbox.py) and the explorer's
runner (tests/agents/test_code_runner.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

HOSTILE = Path(__file__).parents[1] / "trainer_daemon" / "hostile"


def header(text: str, key: str) -> str | None:
    """A corpus file's `# key: value` header line, or None."""
    match = re.search(rf"^# {key}: (.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else None


def snapshot(root: Path, skip: Path) -> dict[str, tuple[int, float]]:
    """Size and modification time of every file under `root` outside `skip`."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime) for p in root.rglob("*")
            if p.is_file() and skip not in p.parents}


def os_gives_namespaces() -> bool:
    """Whether a child process may unshare its network and mount namespaces (root, usually)."""
    probe = "import ctypes; raise SystemExit(ctypes.CDLL(None).unshare(0x40000000 | 0x20000) != 0)"
    return subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0


def fork_many(count: int) -> str:
    """A script that forks `count` sleeping children as far as it may, prints "FORKED n FAILED m", and kills them."""
    return f"""
import os, time
children, failed = [], 0
for _ in range({count}):
    try:
        pid = os.fork()
    except OSError:
        failed += 1
        continue
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    children.append(pid)
print('FORKED', len(children), 'FAILED', failed, flush=True)
for pid in children:
    os.kill(pid, 9)  # its own process group
    os.waitpid(pid, 0)
"""


def group_gone(pgid: int) -> bool:
    """Whether no process of the process group `pgid` is left (a zombie still counts)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False
