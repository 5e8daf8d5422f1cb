"""The exploration sandbox: code runs, and each wall holds.

Runtime tests start real child processes (about 0.1 s each). Where the test
runs as root the namespaces are the main walls; tests marked "hook alone"
switch them off through the private `_run_in_sandbox` seam to show that the
audit hook stands by itself.
"""

from __future__ import annotations

import ast
import asyncio
import errno
import os
import re
import socket
from pathlib import Path

import numpy as np
import pytest

from agentnas.agents import code_runner
from agentnas.agents.code_runner import CodeRun, child_env, run_code
from agentnas.sandbox.audit import exploration_policy, make_audit_hook
from agentnas.sandbox.limits import make_task_cgroup, remove_cgroup
from tests.sandbox.helpers import HOSTILE, fork_many, header, os_gives_namespaces, snapshot

pytestmark = pytest.mark.timeout(60)

FAKE_KEY = "placeholder-secret-for-sandbox-tests"
NO_NAMESPACES = "no namespaces here (they need root with CAP_SYS_ADMIN); only the audit hook guards this case"


@pytest.fixture
def data(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    np.save(folder / "x.npy", np.arange(12, dtype=np.int64).reshape(3, 4))
    return folder


@pytest.fixture
def scratch_root(tmp_path):
    return tmp_path / "scratch"


async def run(code: str, scratch_root: Path, data_dir: Path | None = None, **kwargs) -> CodeRun:
    kwargs = {"timeout_s": 10.0, "memory_mb": 1024.0, **kwargs}
    return await run_code(code, data_dir=data_dir, scratch_root=scratch_root, **kwargs)


async def run_hook_alone(code: str, scratch_root: Path, data_dir: Path | None = None) -> CodeRun:
    return await code_runner._run_in_sandbox(code, data_dir=data_dir, scratch_root=scratch_root, timeout_s=10.0,
                                             memory_mb=1024.0, output_chars=5000, cpu_s=None, namespaces=False)


def missing_namespaces(result: CodeRun) -> bool:
    """Whether the run lacked the network or mount namespace (other warnings are about other walls)."""
    return any("namespace" in w or "read-only" in w for w in result.warnings)


def live_group_members(pgid: int) -> list[int]:
    """Processes in group `pgid` that are not zombies (a zombie waits for init to reap it)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


def processes_mentioning(text: str) -> list[int]:
    """Live processes with `text` in their command line or working folder (other than this test's)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                mentions = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
                try:
                    mentions += "\0" + os.readlink(f"/proc/{entry}/cwd")
                except OSError:
                    pass  # another user's process
                if text in mentions:
                    if Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                        found.append(int(entry))
            except OSError:
                continue
    return found


# ---------------------------------------------------------------- pure parts


def test_child_env_is_an_allow_list(tmp_path):
    parent = {
        "PATH": "/usr/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TZ": "UTC", "HOME": "/root",
        "PYTHONPATH": "/src", "ANTHROPIC_API_KEY": FAKE_KEY, "OPENAI_API_KEY": "x", "AWS_SECRET_ACCESS_KEY": "x",
        "NATS_URL": "nats://secret", "GITHUB_TOKEN": "x", "DB_PASSWORD": "x", "LC_SECRET": "x", "OTHER": "x",
    }
    env = child_env(parent, scratch=tmp_path, data_dir=Path("/data"))
    assert env["PATH"] == "/usr/bin" and env["LANG"] == env["LC_ALL"] == "C.UTF-8" and env["TZ"] == "UTC"
    assert env["HOME"] == env["TMPDIR"] == str(tmp_path)
    assert env["MPLBACKEND"] == "Agg" and env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2"
    assert env["AGENTNAS_DATA"] == "/data"
    assert not {"PYTHONPATH", "ANTHROPIC_API_KEY", "OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "NATS_URL",
                "GITHUB_TOKEN", "DB_PASSWORD", "LC_SECRET", "OTHER"} & set(env)
    assert FAKE_KEY not in str(env)
    assert "AGENTNAS_DATA" not in child_env(parent, scratch=tmp_path, data_dir=None)


@pytest.mark.parametrize("returncode, timed_out, output, status", [
    (0, False, "", "ok"),
    (0, False, "MemoryError mentioned in passing", "ok"),
    (1, False, "ZeroDivisionError", "error"),
    (-9, True, "", "timeout"),
    (-24, False, "", "timeout"),  # SIGXCPU: the CPU limit
    (86, False, "", "oom"),
    (-9, False, "", "oom"),  # SIGKILL from outside: the host's OOM killer
    (1, False, "RuntimeError: DefaultCPUAllocator: can't allocate memory", "oom"),
    (-11, False, "", "error"),
])
def test_status(returncode, timed_out, output, status):
    assert code_runner._status(returncode, timed_out, output) == status


def test_audit_hook_refuses_what_it_should(tmp_path):
    scratch, data, home = str(tmp_path / "scratch"), str(tmp_path / "home" / "data"), str(tmp_path / "home")
    os.makedirs(scratch)
    os.makedirs(data)
    hook = make_audit_hook(exploration_policy((scratch,), (data,), (home,), programs=False))
    allowed = [
        ("open", (f"{scratch}/out.csv", "w", os.O_WRONLY | os.O_CREAT)),
        ("open", (f"{data}/x.npy", "rb", os.O_RDONLY)),
        ("open", ("/dev/null", "w", os.O_WRONLY)),
        ("open", (5, "w", os.O_WRONLY)),  # a descriptor: checked when it was opened
        ("open", (f"/proc/{os.getpid()}/status", "r", os.O_RDONLY)),
        ("os.remove", (f"{scratch}/out.csv", -1)),
        ("socket.bind", (None, f"{scratch}/sock")),
        ("os.listdir", (data,)),
    ]
    for event, args in allowed:
        hook(event, args)
    refused = [
        ("open", (f"{data}/x.npy", "r+b", os.O_RDWR)),
        ("open", (str(tmp_path / "outside.txt"), "a", os.O_WRONLY | os.O_APPEND)),
        ("open", (f"{home}/.netrc", "r", os.O_RDONLY)),
        ("open", ("/proc/1/environ", "rb", os.O_RDONLY)),
        ("open", (data, None, os.O_RDONLY)),  # a folder descriptor would allow writes relative to it
        ("os.remove", (f"{data}/x.npy", -1)),
        ("os.remove", ("x", 7)),  # relative to a foreign folder descriptor
        ("os.rename", (f"{scratch}/a", f"{data}/a", -1, -1)),
        ("socket.connect", (None, ("127.0.0.1", 4222))),
        ("socket.connect", (None, "/var/run/docker.sock")),
        ("socket.sendto", (None, ("8.8.8.8", 53))),
        ("os.listdir", (home,)),
        ("resource.setrlimit", (9, (-1, -1))),
        ("subprocess.Popen", ("curl", ["curl"], None, None)),
        ("os.exec", ("/bin/sh", ["sh"], None)),
    ]
    for event, args in refused:
        with pytest.raises(PermissionError, match="sandbox refused"):
            hook(event, args)
    with_programs = make_audit_hook(exploration_policy((scratch,), (), (), programs=True))
    with_programs("subprocess.Popen", ("ls", ["ls"], None, None))  # a network namespace holds them


async def test_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="data folder not found"):
        await run_code("pass", data_dir=tmp_path / "missing", scratch_root=tmp_path)
    with pytest.raises(ValueError, match="must be positive"):
        await run_code("pass", data_dir=None, scratch_root=tmp_path, timeout_s=0)


# ---------------------------------------------------------------- running code


async def test_prints_come_back_in_order_from_a_scratch_folder_that_is_removed(scratch_root):
    code = "import os, sys\nprint('one')\nprint('two', file=sys.stderr)\nprint('three')\nprint('CWD', os.getcwd())\n"
    result = await run(code, scratch_root)
    assert result.status == "ok" and result.returncode == 0 and 0 < result.seconds < 10
    assert result.output.startswith("one\ntwo\nthree\n")
    cwd = Path(re.search(r"CWD (\S+)", result.output).group(1))
    assert cwd.parent == scratch_root.resolve() and not cwd.exists()
    assert list(scratch_root.iterdir()) == []
    if os.geteuid() == 0 and not missing_namespaces(result):  # every wall up: also the private /dev/shm
        shm = await run("open('/dev/shm/x', 'w').write('x')\nimport os\nprint(os.listdir('/dev/shm'))\n", scratch_root)
        assert shm.output == "['x']\n" and not Path("/dev/shm/x").exists()


async def test_exception_is_an_error_with_the_line_number(scratch_root):
    result = await run("x = 1\nprint('before')\ny = x / 0\n", scratch_root)
    assert result.status == "error" and result.returncode == 1
    assert result.output.startswith("before\nTraceback")
    assert 'File "explore.py", line 3' in result.output and "ZeroDivisionError" in result.output
    assert "code_runner" not in result.output and "runpy" not in result.output

    syntax = await run("print('ok')\ndef broken(:\n", scratch_root)
    assert syntax.status == "error" and "SyntaxError" in syntax.output and "line 2" in syntax.output

    exit_code = await run("import sys\nsys.exit(3)\n", scratch_root)
    assert exit_code.status == "error" and exit_code.returncode == 3


async def test_infinite_loop_times_out_and_the_process_group_is_gone(scratch_root):
    code = ("import os, time\npid = os.fork()\nif pid == 0:\n    while True:\n        time.sleep(0.1)\n"
            "print('PIDS', os.getpid(), pid, flush=True)\nwhile True:\n    pass\n")
    result = await run(code, scratch_root, timeout_s=1.5)
    assert result.status == "timeout" and result.returncode == -9
    assert 1.5 <= result.seconds < 5
    assert "wall-clock limit of 1.5 s exceeded" in result.output
    leader, grandchild = map(int, re.search(r"PIDS (\d+) (\d+)", result.output).groups())
    assert live_group_members(leader) == []
    assert grandchild not in live_group_members(leader) and not processes_mentioning(str(scratch_root))


async def test_cpu_limit_is_a_timeout(scratch_root):
    result = await run("while True:\n    pass\n", scratch_root, cpu_s=1.0)
    assert result.status == "timeout" and result.returncode == -24
    assert result.seconds < 8 and "CPU time limit" in result.output


async def test_cancelled_run_leaves_no_process_and_no_scratch(scratch_root):
    task = asyncio.create_task(run("print('started', flush=True)\nwhile True:\n    pass\n", scratch_root))
    await asyncio.sleep(1.0)
    assert processes_mentioning(str(scratch_root))  # it is running
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert processes_mentioning(str(scratch_root)) == []
    assert list(scratch_root.iterdir()) == []


async def test_huge_output_is_truncated_keeping_head_and_tail(scratch_root):
    code = "print('HEAD')\nfor i in range(200000):\n    print('line', i)\nprint('x' * 3_000_000)\nprint('TAIL')\n"
    result = await run(code, scratch_root, output_chars=2000)
    assert result.status == "ok" and len(result.output) <= 2000
    assert result.output.startswith("HEAD\nline 0\nline 1\n") and result.output.endswith("x\nTAIL\n")
    total = len("HEAD\n" + "".join(f"line {i}\n" for i in range(200000)) + "x" * 3_000_000 + "\nTAIL\n")
    cut = int(re.search(r"\n\.\.\. \[(\d+) characters cut\] \.\.\.\n", result.output).group(1))
    assert cut == total - len(result.output) + len(f"\n... [{cut} characters cut] ...\n")


async def test_secrets_in_the_parent_environment_are_not_visible(scratch_root, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", FAKE_KEY)
    monkeypatch.setenv("MY_SERVICE_TOKEN", FAKE_KEY)
    monkeypatch.setenv("NATS_URL", "nats://user:pw@host:4222")
    code = ("import os\nprint(sorted(os.environ))\nprint(os.environ['HOME'] == os.getcwd())\n"
            "try:\n    open(f'/proc/{os.getppid()}/environ', 'rb').read()\n    print('READ PARENT')\n"
            "except PermissionError as exc:\n    print('refused', exc)\n")
    result = await run(code, scratch_root)
    assert result.status == "ok", result.output
    assert FAKE_KEY not in result.output and "ANTHROPIC" not in result.output and "NATS_URL" not in result.output
    names = set(ast.literal_eval(result.output.splitlines()[0]))
    assert names <= {"PATH", "LANG", "TZ", "HOME", "TMPDIR", "JOBLIB_TEMP_FOLDER", "MPLBACKEND", "OMP_NUM_THREADS",
                     "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS", "MALLOC_ARENA_MAX"} | {
        n for n in names if n.startswith("LC_")}
    assert "True" in result.output and "refused reading another process" in result.output


WRITE_ATTEMPTS = """
import ctypes, os
data = os.environ['AGENTNAS_DATA']
libc = ctypes.CDLL(None, use_errno=True)
for target in (os.path.join(data, 'new.txt'), {outside!r}):
    try:
        open(target, 'w').write('x')
        print('PY WROTE', target)
    except OSError as exc:
        print('PY REFUSED', type(exc).__name__)
    fd = libc.open(target.encode(), os.O_WRONLY | os.O_CREAT, 0o644)  # C code: no audit hook sees this
    print('C', fd, ctypes.get_errno())
open('inside.txt', 'w').write('scratch is writable')
print('INSIDE', open('inside.txt').read())
"""


async def test_data_folder_is_read_only_and_nothing_is_written_outside_scratch(scratch_root, data, tmp_path):
    outside = tmp_path / "outside.txt"
    result = await run(WRITE_ATTEMPTS.format(outside=str(outside)), scratch_root, data_dir=data)
    assert result.status == "ok", result.output
    assert result.output.count("PY REFUSED") == 2 and "PY WROTE" not in result.output
    assert "INSIDE scratch is writable" in result.output
    if missing_namespaces(result):
        pytest.skip(f"C-level writes: {NO_NAMESPACES}")
    assert result.output.count(f"C -1 {errno.EROFS}") == 2, result.output
    assert sorted(p.name for p in data.iterdir()) == ["x.npy"] and not outside.exists()
    (data / "host.txt").write_text("the host's mounts are untouched")  # the read-only mount stayed private


async def test_hook_alone_refuses_writes_outside_scratch(scratch_root, data, tmp_path):
    outside = tmp_path / "outside.txt"
    result = await run_hook_alone(WRITE_ATTEMPTS.format(outside=str(outside)), scratch_root, data_dir=data)
    assert result.status == "ok", result.output
    assert result.output.count("PY REFUSED PermissionError") == 2 and "INSIDE scratch is writable" in result.output
    assert any("filesystem not read-only" in w for w in result.warnings)
    assert any("no network namespace" in w for w in result.warnings)
    for path in (data / "new.txt", outside):  # C code slipped past the hook: that is what namespaces are for
        path.unlink(missing_ok=True)


NETWORK_ATTEMPTS = """
import ctypes, socket, struct
port = {port}
try:
    socket.create_connection(('127.0.0.1', port), timeout=2)
    print('PY CONNECTED')
except OSError as exc:
    print('PY FAILED', type(exc).__name__, exc)
libc = ctypes.CDLL(None, use_errno=True)  # C code: no audit hook sees this
fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
address = struct.pack('=H', socket.AF_INET) + struct.pack('!H', port) + socket.inet_aton('127.0.0.1') + bytes(8)
print('C', libc.connect(fd, address, len(address)), ctypes.get_errno())
"""


async def test_network_connect_to_a_listening_loopback_socket_fails(scratch_root):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        result = await run(NETWORK_ATTEMPTS.format(port=listener.getsockname()[1]), scratch_root)
        assert result.status == "ok", result.output
        assert "PY FAILED PermissionError" in result.output and "PY CONNECTED" not in result.output
        if not missing_namespaces(result):  # the namespace holds even where the hook is bypassed
            assert f"C -1 {errno.ENETUNREACH}" in result.output, result.output
            with pytest.raises(BlockingIOError):
                listener.accept()
        else:
            listener.accept()[0].close()  # only the audit hook guards plain Python code here


async def test_hook_alone_refuses_sockets_and_new_programs(scratch_root):
    code = ("import socket, subprocess\ntry:\n    socket.create_connection(('127.0.0.1', 9), timeout=1)\n"
            "except OSError as exc:\n    print('SOCKET', exc)\n"
            "try:\n    subprocess.run(['true'])\nexcept OSError as exc:\n    print('PROGRAM', exc)\n")
    result = await run_hook_alone(code, scratch_root)
    assert "SOCKET sandbox refused socket.connect" in result.output
    assert "PROGRAM sandbox refused subprocess.Popen" in result.output


@pytest.mark.parametrize("allocation", ["bytearray(20 * 2**30)", "import numpy as np\nnp.ones(20 * 2**30 // 8)"])
async def test_memory_blow_up_is_oom(scratch_root, allocation):
    result = await run(f"print('allocating')\n{allocation}\n", scratch_root)
    assert result.status == "oom" and result.returncode == code_runner.OOM_EXIT
    assert result.output.startswith("allocating\n") and "MemoryError" in result.output
    assert result.seconds < 5


async def test_file_size_is_limited(scratch_root):
    result = await run("open('big.bin', 'wb').write(bytes(100 * 2**20))\n", scratch_root)
    assert result.status == "error" and "File too large" in result.output


async def test_reading_a_npy_file_from_the_data_folder_works(scratch_root, data):
    code = ("import os\nimport numpy as np\n"
            "x = np.load(os.path.join(os.environ['AGENTNAS_DATA'], 'x.npy'))\nprint(x.shape, int(x.sum()))\n")
    result = await run(code, scratch_root, data_dir=data)
    assert result.status == "ok", result.output
    assert result.output == "(3, 4) 66\n"


async def test_parent_home_is_hidden_but_scratch_and_data_inside_it_are_not(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    (home / "data" / "d.txt").write_text("data")
    (home / "config.toml").write_text(f"api_key = '{FAKE_KEY}'")
    monkeypatch.setenv("HOME", str(home))  # the usual layout: ~/.agentnas holds scratch, data and the log
    code = ("import os\nprint(open(os.path.join(os.environ['AGENTNAS_DATA'], 'd.txt')).read())\n"
            f"open('mine.txt', 'w').write('mine')\nprint(open('mine.txt').read())\n"
            f"print(open({str(home / 'config.toml')!r}).read())\n")
    result = await run(code, home / "scratch", data_dir=home / "data")
    assert result.status == "error" and result.output.startswith("data\nmine\n")
    assert "sandbox refused reading" in result.output and FAKE_KEY not in result.output


async def test_process_count_is_limited_for_root_too(scratch_root):
    result = await run(fork_many(100), scratch_root)  # and it signals its own children
    if any("no pids cgroup" in w for w in result.warnings):
        pytest.skip("root without a writable pids cgroup: nothing counts its processes (the run says so)")
    assert result.status == "ok", result.output
    forked, failed = map(int, re.search(r"FORKED (\d+) FAILED (\d+)", result.output).groups())
    assert forked <= code_runner.NPROC_EXTRA and failed >= 100 - code_runner.NPROC_EXTRA
    assert processes_mentioning(str(scratch_root)) == [] and list(scratch_root.iterdir()) == []


async def test_signals_reach_only_its_own_process_group(scratch_root):
    code = ("import os\nfor name, pid in (('PARENT', os.getppid()), ('INIT', 1)):\n    try:\n        os.kill(pid, 0)\n"
            "    except PermissionError as exc:\n        print(name, exc)\n")
    result = await run(code, scratch_root)
    assert result.status == "ok", result.output
    assert "PARENT sandbox refused os.kill" in result.output and "INIT sandbox refused os.kill" in result.output


# ---------------------------------------------------------------- the hostile corpus


CALL_THE_MODEL = "\nimport torch\nprint('MODEL RAN', Architecture()(torch.zeros(2, 3, 8, 8)).shape)\n"
READ_ONLY = "Read-only file system"
# The corpus's headers describe model code in the trainer (a gate, a strict hook). The explorer has no gate
# and another policy; where that changes what a snippet meets, (statuses, text in the output, what it needs):
EXPLORER_OUTCOMES: dict[str, tuple[set[str], str, str | None]] = {
    # ctypes is allowed: libc's system() runs touch, and only the read-only mounts stop it
    "ctypes_libc": ({"ok"}, READ_ONLY, "namespaces"),
    # forks are allowed; the process count is not (RLIMIT_NPROC, or a pids cgroup for root): the bomb churns
    # at its limit until the wall clock (test_process_count_is_limited_for_root_too counts, without torch)
    "fork_bomb": ({"error", "timeout"}, "", "a process limit"),
    # the explorer reads system files; what it hides (the parent's home) is shown by test_parent_home_...
    "open_read_secret": ({"ok"}, "MODEL RAN", None),
    # its hook cannot be switched off; the network namespace alone: test_network_connect_to_a_listening_...
    "socket_no_network": ({"error"}, "sandbox refused socket.connect", None),
    # gate-only snippets: what the explorer's walls make of them
    "format_string_leak": ({"ok"}, "MODEL RAN", None),
    "torch_compile": ({"ok", "error", "timeout"}, "", None),  # compiling is allowed; CPU time is not endless
    "torch_hub": ({"error"}, "", None),  # no network: nothing to download
    "torch_save_literal": ({"error"}, READ_ONLY, "namespaces"),  # C++ writes: only the mounts see them
}
# Snippets that start a program (the trainer's hook refuses that outright). The explorer's hook refuses it
# only without a network namespace; with one, the program runs and the read-only mounts stop what it does.
PROGRAM_STARTERS = {"dunder_import", "eval_string", "exec_string", "globals_builtins", "os_system",
                    "subclasses_walk", "subprocess_run"}
WALL_CLOCK_S = {"sleep_forever": 5.0, "fork_bomb": 15.0}  # what only the wall clock ends
# Met by limits alone (or by nothing at all): namespaces change nothing, so these run with them only.
LIMITS_ONLY = {"alloc_4gb", "alloc_50gb", "fork_bomb", "huge_file", "infinite_forward", "infinite_init",
               "sleep_forever", "forged_result", "format_string_leak", "open_read_secret", "torch_compile"}


def corpus_cases() -> list[tuple[Path, str]]:
    return [(path, walls) for path in sorted(HOSTILE.glob("*.py")) for walls in ("namespaces", "hook alone")
            if walls == "namespaces" or path.stem not in LIMITS_ONLY]


def explorer_outcome(path: Path, programs_run: bool) -> tuple[set[str], str, str | None]:
    """What must come of the snippet in the explorer: from the table, else from its header (statuses
    without the gate's "rejected", the hook's word for a refusal)."""
    if path.stem in PROGRAM_STARTERS and programs_run:
        return {"ok", "error"}, READ_ONLY, None
    if path.stem in EXPLORER_OUTCOMES:
        return EXPLORER_OUTCOMES[path.stem]
    text = path.read_text()
    statuses, _, expected = header(text, "runtime").partition("|")
    wanted = {s.strip() for s in statuses.split(",")} - {"rejected"}
    return wanted, expected.strip().replace("sandbox blocked", "sandbox refused"), header(text, "needs")


def process_count_limited() -> bool:
    if os.getuid() != 0:
        return True  # RLIMIT_NPROC
    folder = make_task_cgroup(f"probe-{os.getpid()}", 8)
    if folder is not None:
        remove_cgroup(folder)
    return folder is not None


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A folder outside scratch that must stay as it is, a port no run may reach, a key no run may see."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "outside").mkdir()
    (root / "outside" / "sentinel.txt").write_text("untouched")
    with socket.socket() as listener, pytest.MonkeyPatch.context() as patch:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        patch.setenv("ANTHROPIC_API_KEY", FAKE_KEY)
        patch.setenv("AGENTNAS_TEST_TOKEN", FAKE_KEY)
        yield root, listener


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("path, walls", corpus_cases(),
                         ids=lambda v: v.stem if isinstance(v, Path) else v.replace(" ", "-"))
async def test_hostile_snippet_is_contained(path, walls, corpus):
    """Each snippet of the trainer's hostile corpus, run as a script that builds and calls its model."""
    root, listener = corpus
    scratch_root = root / f"scratch-{path.stem}-{walls.replace(' ', '-')}"
    programs_run = walls == "namespaces" and os_gives_namespaces()
    statuses, expected, needs = explorer_outcome(path, programs_run)
    if needs == "namespaces" and not programs_run:
        pytest.skip("only the read-only mounts stop this one in the explorer (it allows ctypes and C++ writes)")
    if needs == "a process limit" and not process_count_limited():
        pytest.skip("root without a writable pids cgroup: no wall counts the explorer's processes")
    source = (path.read_text().replace("OUTSIDE_DIR", str(root / "outside"))
              .replace("PARENT_PORT", str(listener.getsockname()[1])) + CALL_THE_MODEL)
    before = snapshot(root, scratch_root)

    result = await code_runner._run_in_sandbox(
        source, data_dir=None, scratch_root=scratch_root, timeout_s=WALL_CLOCK_S.get(path.stem, 60.0),
        memory_mb=1024.0, output_chars=5000, cpu_s=2.0, namespaces=walls == "namespaces")

    assert result.status in statuses, result
    assert expected in result.output, result
    assert "sandbox/audit.py" not in result.output  # the hook's own frames are not the code's
    # no secret, nothing written outside scratch, nothing reached the parent, nothing left running
    assert FAKE_KEY not in result.output and "ANTHROPIC" not in result.output and "AGENTNAS_TEST" not in result.output
    if path.stem == "env_read":
        assert "HOME=" in result.output  # it did read its environment
    assert snapshot(root, scratch_root) == before
    assert sorted(p.name for p in (root / "outside").iterdir()) == ["sentinel.txt"]
    with pytest.raises(BlockingIOError):
        listener.accept()
    assert processes_mentioning(str(scratch_root)) == []
    assert list(scratch_root.iterdir()) == []
