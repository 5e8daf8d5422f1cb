"""`agentnas up`: the bus, the recorder and every service on this machine, supervised."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from agentnas.bus import messages, subjects
from agentnas.bus.config import Config
from agentnas.bus.connect import close, connect, ensure_streams
from agentnas.bus.publish import publish
from agentnas.bus.server import NatsServer
from agentnas.ops import home as home_mod
from agentnas.ops.supervisor import ServiceSpec, Supervisor, sender
from agentnas.trainer_daemon.devices import default_devices, parse_device


def service_specs(config: Config, config_path: str | None, home: Path, url: str) -> list[ServiceSpec]:
    """Every service `up` starts on this machine: the recorder, one trainer daemon per GPU
    (or one for the CPU). Later issues append the agents."""
    base = [sys.executable, "-m", "agentnas.ops.cli", "--home", str(home), "--log-format", "json"]
    if config_path:
        base += ["--config", config_path]
    specs = [ServiceSpec(name="recorder", argv=[*base, "recorder", "--nats-url", url])]
    for device in config.trainer.devices or default_devices():
        device = parse_device(device)
        specs.append(ServiceSpec(name=f"trainer-{device.replace(':', '')}",
                                 argv=[*base, "trainer", "--nats-url", url, "--device", device]))
    return specs


async def run_up(
    config: Config,
    home: Path,
    config_path: str | None,
    nats_url: str | None,
    run_for: float,
    console: Console,
) -> None:
    server = None
    if not nats_url:
        server = NatsServer(home / "nats", binary=config.bus.nats_server_binary or None)
        nats_url = server.start()
    try:
        await _supervise(config, home, config_path, nats_url, run_for, console, embedded=server is not None)
    finally:
        if server is not None:
            server.stop()
        home_mod.clear_bus_file(home)


async def _supervise(
    config: Config,
    home: Path,
    config_path: str | None,
    url: str,
    run_for: float,
    console: Console,
    *,
    embedded: bool,
) -> None:
    nc = await connect(url, config.bus, name="agentnas-supervisor")
    js = nc.jetstream()
    await ensure_streams(js)
    home_mod.write_bus_file(home, url)
    me = sender()

    async def notify(payload: messages.Kind) -> None:
        await publish(js, messages.make_event(payload, run_id=subjects.SYSTEM_RUN, sender=me))

    supervisor = Supervisor(service_specs(config, config_path, home, url), home / "logs", notify)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await supervisor.start()
    _print_started(console, home, url, embedded, supervisor)
    try:
        if run_for > 0:
            await asyncio.wait_for(stop.wait(), timeout=run_for)
        else:
            await stop.wait()
    except asyncio.TimeoutError:
        pass
    console.print("stopping ...")
    await supervisor.stop()
    await close(nc)
    _print_services(console, supervisor)


def _print_started(console: Console, home: Path, url: str, embedded: bool, supervisor: Supervisor) -> None:
    console.print(f"agentnas is up: bus {url} ({'embedded' if embedded else 'external'}), home {home}")
    _print_services(console, supervisor)
    console.print(f"log: {home_mod.log_file(home)}; try `agentnas --home {home} runs`. Ctrl-C stops.")


def _print_services(console: Console, supervisor: Supervisor) -> None:
    table = Table("service", "pid", "status", "restarts")
    for state in supervisor.states.values():
        table.add_row(state.name, str(state.pid), state.status, str(state.restarts))
    console.print(table)
