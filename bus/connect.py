"""Connecting to NATS: a hard deadline on the first connect, endless reconnects after it."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import nats
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js import api
from nats.js.errors import BadRequestError, NotFoundError

from agentnas.bus import subjects
from agentnas.bus.config import BusConfig
from agentnas.bus.health import Health

log = structlog.get_logger("agentnas.bus")


class BusUnavailable(RuntimeError):
    """The NATS server could not be reached (one-line message)."""


def _tls_context(cfg: BusConfig) -> ssl.SSLContext | None:
    if not (cfg.tls_ca or cfg.tls_cert):
        return None
    ctx = ssl.create_default_context(cafile=cfg.tls_ca or None)
    if cfg.tls_cert:
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key or None)
    return ctx


def _auth_options(cfg: BusConfig) -> dict:
    options: dict = {}
    if cfg.token:
        options["token"] = cfg.token
    if cfg.user:
        options["user"] = cfg.user
        options["password"] = cfg.password
    if cfg.creds_file:
        if not Path(cfg.creds_file).is_file():
            raise BusUnavailable(f"NATS credentials file not found: {cfg.creds_file}")
        options["user_credentials"] = cfg.creds_file
    tls = _tls_context(cfg)
    if tls is not None:
        options["tls"] = tls
    return options


async def connect(url: str, cfg: BusConfig = BusConfig(), *, name: str = "agentnas",
                  health: Health | None = None) -> Client:
    """Connect within `cfg.connect_timeout_s`, then reconnect forever if the server goes away.

    A dead URL fails in seconds with BusUnavailable instead of minutes of retries.
    """
    deadline = max(0.5, cfg.connect_timeout_s)
    nc = Client()

    first = {"connected": False, "error": ""}

    async def on_error(exc: Exception) -> None:
        if not first["connected"]:
            first["error"] = str(exc) or type(exc).__name__  # reported once, below
            return
        log.warning("nats error", error=str(exc) or type(exc).__name__)

    async def on_disconnect() -> None:
        if not (nc.is_closed or nc.is_draining):  # our own close is not news
            log.warning("nats disconnected", url=url)
            if health is not None:
                health.fault(f"bus unreachable at {url}")

    async def on_reconnect() -> None:
        log.info("nats reconnected", url=url)
        if health is not None:
            health.clear()

    try:
        await asyncio.wait_for(
            nc.connect(
                url,
                name=name,
                connect_timeout=min(2, deadline),
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
                pending_size=64 * 1024 * 1024,
                **_auth_options(cfg),
            ),
            timeout=deadline,
        )
        first["connected"] = True
        return nc
    except (asyncio.TimeoutError, OSError, nats.errors.Error) as exc:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, asyncio.TimeoutError):
            reason = f"{first['error'] + '; ' if first['error'] else ''}gave up after {deadline:g} s"
        raise BusUnavailable(f"cannot reach NATS at {url}: {reason}") from None


async def close(nc: Client, timeout: float = 5.0) -> None:
    """Flush what we published or acked, then close. (Draining a connection that holds a
    JetStream pull subscription can hang in nats-py, so services close instead.)"""
    if nc.is_closed:
        return
    try:
        await nc.flush(timeout=timeout)
    except Exception as exc:
        log.warning("nats flush before close failed", error=str(exc) or type(exc).__name__)
    await nc.close()


async def ensure_streams(js: JetStreamContext, *, events_max_age_s: float = 0) -> None:
    """Create EVENTS and EVAL if missing; idempotent, safe to call from every process."""
    events = api.StreamConfig(
        name=subjects.EVENTS_STREAM,
        subjects=[subjects.EVENTS_SUBJECTS],
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS,
        max_age=events_max_age_s or None,
        duplicate_window=120.0,  # publishes retried with the same message id are dropped
        max_msg_size=-1,
    )
    evaluation_queue = api.StreamConfig(
        name=subjects.EVAL_STREAM,
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.WORK_QUEUE,
        sources=[
            api.StreamSource(
                name=subjects.EVENTS_STREAM, filter_subject=subjects.EVAL_REQUESTS_FILTER
            )
        ],
    )
    for config in (events, evaluation_queue):
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            try:
                await js.add_stream(config)
            except BadRequestError as exc:
                # Another process created it between our check and our add.
                if "already in use" not in str(exc):
                    raise
