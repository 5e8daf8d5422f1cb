"""structlog set-up shared by every process: JSON lines for services, readable console for people.

Tracebacks are rendered without frame locals, which may hold secrets (API keys, tokens).
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

Format = Literal["auto", "console", "json"]


def configure_logging(fmt: Format = "auto", level: str = "info", *, stream=None) -> None:
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    shared = [
        structlog.contextvars.merge_contextvars,  # run_id / agent / eval_id bound per task
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        renderer: structlog.typing.Processor = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        ))
    else:
        renderer = structlog.dev.ConsoleRenderer(
            exception_formatter=structlog.dev.RichTracebackFormatter(show_locals=False)
        )
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # Libraries that use stdlib logging (nats, httpx, asyncio) go to the same place, warnings only,
    # rendered like ours: one JSON object per line for services, exceptions included.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    if fmt == "json":
        sys.excepthook = _excepthook  # an uncaught exception is one JSON line too


def _excepthook(kind, value, tb) -> None:
    structlog.get_logger("agentnas").critical("uncaught exception", exc_info=(kind, value, tb))


def bind(**values: str) -> None:
    """Bind context (run_id=..., agent=..., eval_id=...) to every later log line of this task."""
    structlog.contextvars.bind_contextvars(**values)
