"""The parent's side of a sandboxed child: end it whole, keep its output within bounds, read how it ended.

A child leads a process group of its own (start_new_session), so killing the
group also kills what it started, unless that left the group (setsid; the
pids cgroup of limits.py catches those). Its output is untrusted and
unbounded: collect it as it comes, keeping only what fits (`Tail`: the end,
where tracebacks are; `HeadTail`: the start and the end, the middle cut with a
marker), so a flood costs no memory. An out-of-memory death shows as one of a
few messages in that output.
"""

from __future__ import annotations

import asyncio
import os
import signal

__all__ = ["OOM_MARKERS", "HeadTail", "Tail", "kill_group", "last_line", "looks_oom"]

OOM_MARKERS = ("MemoryError", "can't allocate memory", "Cannot allocate memory", "out of memory",
               "OutOfMemoryError")
MARKER_ROOM = 40  # characters HeadTail reserves for its "... [N characters cut] ..." marker
_CONTINUATION = bytes(range(0x80, 0xC0))  # UTF-8 continuation bytes: not counted as characters


def kill_group(pgid: int | None) -> None:
    """SIGKILL the process group `pgid` (a child started with start_new_session leads its own)."""
    if pgid is None:
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def looks_oom(text: str) -> bool:
    """Whether output shows an allocation failure (Python's, an allocator's, CUDA's)."""
    return any(marker in text for marker in OOM_MARKERS)


def last_line(text: str) -> str:
    """The last non-blank line, cut to 200 characters, for a one-line reason."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "(no output)"


class Tail:
    """The last part of a byte stream, cut at a character boundary; counts the characters dropped."""

    def __init__(self, chars: int) -> None:
        self.cap = 4 * max(chars, 1)  # bytes enough for `chars` characters of UTF-8
        self.data = bytearray()
        self.dropped_chars = 0

    def feed(self, chunk: bytes) -> None:
        self.data += chunk
        excess = len(self.data) - self.cap
        if excess > 0:
            while excess < len(self.data) and 0x80 <= self.data[excess] < 0xC0:
                excess += 1  # never start inside a character: its lead byte is gone
            self.dropped_chars += len(bytes(self.data[:excess]).translate(None, _CONTINUATION))
            del self.data[:excess]

    def clear(self) -> None:
        self.data.clear()
        self.dropped_chars = 0

    def text(self, chars: int) -> str:
        """The last `chars` characters."""
        return self.data.decode("utf-8", errors="replace")[-chars:]


class HeadTail(asyncio.Protocol):
    """Reads a child's output pipe as it comes; keeps its first and last bytes, counts the rest."""

    def __init__(self, chars: int) -> None:
        self.cap = 4 * max(chars, 1)
        self.head = bytearray()
        self.rest = Tail(chars)
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        room = self.cap - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        self.rest.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def text(self, chars: int) -> str:
        """At most `chars` characters: all of it, or head + "... [N characters cut] ..." + tail."""
        if not self.rest.dropped_chars:
            whole = (self.head + self.rest.data).decode("utf-8", errors="replace")
            if len(whole) <= chars:
                return whole
            head, tail = whole, whole
            total = len(whole)
        else:
            head = self.head.decode("utf-8", errors="replace")
            tail = self.rest.data.decode("utf-8", errors="replace")
            total = len(head) + self.rest.dropped_chars + len(tail)
        budget = max(chars - MARKER_ROOM, 0)
        keep_head = budget // 3  # the end matters more: tracebacks and results are printed last
        keep_tail = budget - keep_head
        cut = total - keep_head - keep_tail
        return f"{head[:keep_head]}\n... [{cut} characters cut] ...\n{tail[len(tail) - keep_tail:]}"
