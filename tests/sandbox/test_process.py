"""The parent's side of a sandboxed child: output kept within bounds, group kill, how it ended."""

from __future__ import annotations

import re
import subprocess
import sys
import time

from agentnas.sandbox.process import HeadTail, Tail, kill_group, last_line, looks_oom
from tests.sandbox.helpers import group_gone


async def test_head_tail_keeps_short_output_whole_and_cuts_long_output_in_the_middle():
    short = HeadTail(100)
    short.data_received("héllo\n".encode())
    assert short.text(100) == "héllo\n"

    text = "A" * 300 + "é" * 5000 + "€" * 7000 + "Z" * 300  # multi-byte characters in the dropped middle
    stream = HeadTail(1000)
    for i in range(0, len(text.encode()), 777):  # arbitrary chunks, split inside characters
        stream.data_received(text.encode()[i:i + 777])
    kept = stream.text(1000)
    assert len(kept) <= 1000
    head, cut, tail = re.fullmatch(r"(.*)\n\.\.\. \[(\d+) characters cut\] \.\.\.\n(.*)", kept, re.S).groups()
    assert text.startswith(head) and text.endswith(tail) and len(head) > 200 and len(tail) > 500
    assert int(cut) == len(text) - len(head) - len(tail)

    # everything arrived but is longer than asked: the same shape
    whole = HeadTail(1000)
    whole.data_received(b"x" * 1500)
    assert "[540 characters cut]" in whole.text(1000) and len(whole.text(1000)) <= 1000


def test_tail_keeps_the_end_from_a_character_boundary_and_counts_the_rest():
    text = "start " + "€" * 3000 + " END"
    tail = Tail(100)
    for i in range(0, len(text.encode()), 333):  # chunks split inside characters
        tail.feed(text.encode()[i:i + 333])
    assert len(tail.data) <= 400 and "\ufffd" not in tail.data.decode("utf-8", errors="replace")
    assert tail.text(50) == text[-50:]
    assert tail.dropped_chars + len(tail.data.decode()) == len(text)
    tail.clear()
    assert tail.text(50) == "" and tail.dropped_chars == 0


def test_oom_markers_and_last_line():
    assert looks_oom("RuntimeError: DefaultCPUAllocator: can't allocate memory: you tried")
    assert looks_oom("torch.OutOfMemoryError: CUDA out of memory") and looks_oom("MemoryError")
    assert not looks_oom("ValueError: shapes do not match")
    assert last_line("Traceback\n  File x\nValueError: boom\n\n  \n") == "ValueError: boom"
    assert last_line("") == "(no output)" and len(last_line("x" * 500)) == 200


def test_kill_group_kills_the_leader_and_what_it_started():
    proc = subprocess.Popen([sys.executable, "-c", "import os, time\nif os.fork() == 0:\n    time.sleep(60)\n"
                             "print(os.getpid(), flush=True)\ntime.sleep(60)\n"],
                            stdout=subprocess.PIPE, start_new_session=True)
    assert int(proc.stdout.readline()) == proc.pid  # it leads its own group
    kill_group(proc.pid)
    assert proc.wait(10) == -9
    deadline = time.monotonic() + 5
    while not group_gone(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.02)  # the orphaned child is reaped by init
    assert group_gone(proc.pid)
    kill_group(proc.pid)  # gone already: no error
    kill_group(None)
