"""The audit hook factory: the rules both policies share, and where they differ.

The hooks are called as plain functions (installing one here would bind the
test process for good); one test installs each in a child process. What each
caller's sandbox refuses as a whole is tested beside the caller
(tests/trainer_daemon/test_sandbox.py, tests/agents/test_code_runner.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agentnas.sandbox import audit
from agentnas.sandbox.audit import exploration_policy, make_audit_hook, python_roots, strict_policy


@pytest.fixture
def folders(tmp_path):
    scratch, data, home = tmp_path / "scratch", tmp_path / "home" / "data", tmp_path / "home"
    scratch.mkdir()
    data.mkdir(parents=True)
    (data / "x.npy").write_text("x")
    (home / ".netrc").write_text("secret")
    return str(scratch), str(data), str(home)


def hooks(folders):
    scratch, data, home = folders
    return {"strict": make_audit_hook(strict_policy((scratch,), (data,))),
            "exploration": make_audit_hook(exploration_policy((scratch,), (data,), (home,), programs=True))}


def refused(hook, event, args, word) -> bool:
    try:
        hook(event, args)
    except PermissionError as exc:
        assert str(exc).startswith(f"sandbox {word} "), exc
        return True
    return False


@pytest.mark.parametrize("policy, word", [("strict", "blocked"), ("exploration", "refused")])
def test_rules_both_policies_share(folders, policy, word):
    scratch, data, home = folders
    hook = hooks(folders)[policy]
    for event, args in [
        ("open", (f"{scratch}/out.bin", "wb", os.O_WRONLY | os.O_CREAT)),
        ("open", ("/dev/null", "w", os.O_WRONLY)),  # keeps nothing: writable anywhere
        ("open", (f"{data}/x.npy", "rb", os.O_RDONLY)),
        ("os.rename", (f"{scratch}/a", f"{scratch}/b", None, None)),
        ("os.mkdir", (f"{scratch}/sub", 0o777, None)),
        ("shutil.copyfile", (f"{data}/x.npy", f"{scratch}/x.npy")),  # the source is read, not written
        ("os.listdir", (Path(data),)),
    ]:
        assert not refused(hook, event, args, word), (event, args)
    for event, args in [
        ("open", (f"{data}/x.npy", "r+b", os.O_RDWR)),
        ("open", (f"{home}/new", None, os.O_WRONLY | os.O_CREAT)),
        ("open", (scratch, None, os.O_RDONLY)),  # a folder, even scratch: a descriptor would allow openat(..)
        ("open", ("/proc/1/environ", "rb", os.O_RDONLY)),
        ("open", (f"{home}/.netrc", "r", os.O_RDONLY)),
        ("os.remove", (f"{scratch}/x", 7)),  # relative to some folder descriptor
        ("os.chmod", (3, 0o777, None)),  # a descriptor as the path
        ("os.link", (f"{data}/x.npy", f"{scratch}/x", None, None)),  # writes would reach the data
        ("os.symlink", (f"{home}/.netrc", f"{scratch}/l", None)),  # reading through it later
        ("os.setxattr", (f"{data}/x.npy", "user.x", b"1", 0)),
        ("shutil.copyfile", (f"{home}/.netrc", f"{scratch}/n")),
        ("shutil.make_archive", (f"{scratch}/a", "zip", home, None)),
        ("glob.glob", (f"{home}/*", False)),
        ("os.scandir", (Path(home),)),
        ("resource.setrlimit", (9, (-1, -1))),
        ("resource.prlimit", (1, 9, (-1, -1))),
        ("socket.connect", (None, ("127.0.0.1", 4222))),
        ("os.kill", (1, signal.SIGKILL)),
        ("os.kill", (-1, signal.SIGKILL)),  # every process it may signal
        ("os.killpg", (1, signal.SIGKILL)),
    ]:
        assert refused(hook, event, args, word), (event, args)
    # a symlink inside scratch does not lead out of it
    os.symlink(f"{data}/x.npy", f"{scratch}/link")
    assert refused(hook, "open", (f"{scratch}/link", "w", os.O_WRONLY), word)


def test_where_the_two_policies_differ(folders):
    scratch, data, home = folders
    strict, exploration = hooks(folders)["strict"], hooks(folders)["exploration"]
    differ = [  # refused by the strict policy only
        ("open", ("/etc/hostname", "r", os.O_RDONLY)),  # reads outside the roots
        ("os.listdir", ("/usr",)),
        ("open", (5, "w", os.O_WRONLY)),  # a descriptor (checked when the explorer opened it)
        ("socket.bind", (None, f"{scratch}/sock")),  # a Unix socket inside scratch
        ("socket.__new__", (None, 1, 1, 0)),
        ("ctypes.dlopen", ("libc.so.6",)),
        ("sqlite3.connect", (f"{scratch}/db",)),
        ("os.fork", ()),
        ("os.kill", (os.getpid(), 0)),  # its own process group
        ("os.killpg", (0, 0)),
        ("signal.pthread_kill", (1, 0)),
        ("gc.get_objects", (None,)),
        ("subprocess.Popen", ("ls", ["ls"], None, None)),  # allowed here: programs=True
        ("urllib.Request", ("https://example.com", None, {}, "GET")),
    ]
    for event, args in differ:
        assert refused(strict, event, args, "blocked"), (event, args)
        assert not refused(exploration, event, args, "refused"), (event, args)
    assert refused(exploration, "socket.connect", (None, "/var/run/docker.sock"), "refused")


def test_the_explorer_signals_only_its_own_process_group():
    hook = make_audit_hook(exploration_policy(("/nonexistent",), (), (), programs=False))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])  # in this test's group
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        hook("os.kill", (child.pid, signal.SIGTERM))
        hook("os.kill", (-os.getpgrp(), signal.SIGTERM))
        hook("os.killpg", (os.getpgrp(), signal.SIGTERM))
        for event, args in [("os.kill", (other.pid, 0)), ("os.killpg", (other.pid, 0)),
                            ("os.kill", (-other.pid, 0))]:
            with pytest.raises(PermissionError, match="sandbox refused os.kill"):
                hook(event, args)
    finally:
        for proc in (child, other):
            proc.kill()
            proc.wait()
    with pytest.raises(PermissionError, match="sandbox refused os.kill"):
        hook("os.kill", (child.pid, 0))  # reaped: no longer in the group


def test_a_refused_program_says_why_when_the_policy_gives_a_reason():
    hook = make_audit_hook(exploration_policy(("/tmp",), (), (), programs=False))
    with pytest.raises(PermissionError) as refusal:
        hook("os.posix_spawn", ("/bin/sh", ["sh"], None))
    assert str(refusal.value) == ("sandbox refused os.posix_spawn '(no network namespace; a new program "
                                  "would run without this hook)'")
    with pytest.raises(PermissionError) as refusal:
        hook("resource.setrlimit", (9, (-1, -1)))
    assert str(refusal.value) == "sandbox refused resource.setrlimit"


def test_python_roots_hold_the_interpreter_and_our_packages():
    roots = python_roots()
    assert os.path.realpath(sys.prefix) in roots and os.path.realpath(sys.base_prefix) in roots
    assert any(os.path.realpath(os.path.dirname(audit.__file__)).startswith(root) for root in roots)
    assert all(os.path.exists(root) and root == os.path.realpath(root) for root in roots)


INSTALLED = """
import os, sys
from agentnas.sandbox.audit import {factory}, make_audit_hook, python_roots
scratch = sys.argv[1]
sys.addaudithook(make_audit_hook({factory}((scratch,), python_roots(){extra})))
import csv, decimal  # imports after the hook: Python's own files stay readable
open(os.path.join(scratch, 'ok.txt'), 'w').write('x')
for attempt in (lambda: open(os.path.join(os.path.dirname(scratch), 'out.txt'), 'w'),
                lambda: os.system('true')):
    try:
        attempt()
        print('ALLOWED')
    except PermissionError as exc:
        print('REFUSED', exc)
"""


@pytest.mark.parametrize("factory, extra, word", [("strict_policy", "", "blocked"),
                                                  ("exploration_policy", ", (), programs=False", "refused")])
def test_an_installed_hook_lets_python_import_and_refuses_the_rest(tmp_path, factory, extra, word):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    code = INSTALLED.format(factory=factory, extra=extra)
    done = subprocess.run([sys.executable, "-c", code, str(scratch)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(f"REFUSED sandbox {word}") == 2 and "ALLOWED" not in done.stdout
    assert (scratch / "ok.txt").read_text() == "x" and not (tmp_path / "out.txt").exists()
