"""The environment of a sandboxed child: an allow-list, never a copy minus a deny-list.

API keys and bus credentials reach a process through its environment; the child
gets only the few names it needs to run, and a name that looks like a secret is
dropped even when a caller asks to pass it. Everything else is set, not
inherited: HOME and TMPDIR point at the scratch folder, and the thread counts of
the numeric libraries are fixed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["PASSED", "SECRET_MARKERS", "THREAD_VARIABLES", "child_env", "looks_secret"]

# Always passed when the parent has them (plus every LC_* locale variable).
PASSED = ("PATH", "LANG", "TZ")
# Belt and braces over the allow-list: a name with one of these is never passed.
SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL", "AWS_", "ANTHROPIC", "OPENAI", "NATS")
# What OpenMP, MKL, OpenBLAS and numexpr read for their thread pools.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def looks_secret(name: str) -> bool:
    return any(marker in name.upper() for marker in SECRET_MARKERS)


def child_env(parent: Mapping[str, str], *, scratch: Path | str, threads: int, passed: Iterable[str] = (),
              extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The complete environment of a child: PATH, LANG, TZ, LC_* and the names in `passed` from
    `parent` (never one that looks like a secret), then HOME and TMPDIR = `scratch`, `threads`
    threads for each numeric library, a small malloc arena count, and last `extra`."""
    wanted = set(PASSED) | set(passed)
    env = {name: value for name, value in parent.items()
           if (name in wanted or name.startswith("LC_")) and not looks_secret(name)}
    env.update({"HOME": str(scratch), "TMPDIR": str(scratch)})
    env.update(dict.fromkeys(THREAD_VARIABLES, str(threads)))
    env["MALLOC_ARENA_MAX"] = "2"  # each glibc arena reserves 64 MB of address space
    env.update(extra or {})
    return env
