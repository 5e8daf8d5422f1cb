"""`agentnas up` and `agentnas run`: the bus, the recorder, trainers and agents, supervised."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from agentnas.agents.roles import ROLES
from agentnas.bus import messages, subjects
from agentnas.bus.config import Config
from agentnas.bus.connect import close, connect, ensure_streams
from agentnas.bus.publish import publish
from agentnas.bus.health import Health
from agentnas.ops import home as home_mod
from agentnas.ops.embedded_bus import EmbeddedBus
from agentnas.ops.supervisor import ServiceSpec, Supervisor, sender
from agentnas.trainer_daemon.devices import default_devices, parse_device

AGENT_ROLES = ROLES  # one process per role

# What a body does while the system runs: (jetstream, stop event) -> None; returning stops all.
Body = Callable[..., Awaitable[None]]


def service_specs(config: Config, config_path: str | None, home: Path, url: str,
                  role_impls: dict[str, str] | None = None) -> list[ServiceSpec]:
    """Every service started on this machine: the recorder, one trainer daemon per GPU (or
    one for the CPU), and one process per agent role."""
    base = [sys.executable, "-m", "agentnas.ops.cli", "--home", str(home), "--log-format", "json"]
    if config_path:
        base += ["--config", config_path]
    specs = [ServiceSpec(name="recorder", argv=[*base, "recorder", "--nats-url", url])]
    for device in config.trainer.devices or default_devices():
        device = parse_device(device)
        specs.append(ServiceSpec(name=f"trainer-{device.replace(':', '')}",
                                 argv=[*base, "trainer", "--nats-url", url, "--device", device]))
    for role in AGENT_ROLES:
        impl = (role_impls or {}).get(role)
        specs.append(ServiceSpec(name=role, argv=[*base, "agent", role, "--nats-url", url,
                                                  *(["--impl", impl] if impl else [])]))
    return specs


async def run_system(config: Config, home: Path, config_path: str | None, nats_url: str | None, console: Console,
                     body: Body, role_impls: dict[str, str] | None = None) -> None:
    """Start everything, run `body`, stop everything (also on Ctrl-C / SIGTERM)."""
    home_mod.check_log(home)  # a log the recorder cannot write stops everything before it starts
    previous = home_mod.previous_up(home)  # raises if another `up` is running on this home
    bus = None
    health = Health(home, "supervisor")
    if not nats_url:
        bus = EmbeddedBus(home / "nats", binary=config.bus.nats_server_binary or None,
                          health=Health(home, "nats-server"))
        nats_url = bus.start()
    watcher = None
    try:
        nc = await connect(nats_url, config.bus, name="agentnas-supervisor", health=health)
        js = nc.jetstream()
        await ensure_streams(js)
        home_mod.write_bus_file(home, nats_url)
        me = sender()

        async def notify(payload: messages.Kind) -> None:
            await publish(js, messages.make_event(payload, run_id=subjects.SYSTEM_RUN, sender=me))

        if previous is not None:
            console.print(f"the previous agentnas on {home} did not stop cleanly (pid {previous.pid}); "
                          "carrying on from the log")
            await notify(messages.UncleanShutdown(pid=previous.pid, url=previous.url, since=previous.since))
        supervisor = Supervisor(service_specs(config, config_path, home, nats_url, role_impls), home / "logs", notify)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if bus is not None:
            bus.notify = notify
            watcher = asyncio.create_task(bus.watch(js, stop))
        await supervisor.start()
        console.print(f"agentnas is up: bus {nats_url} ({'embedded' if bus else 'external'}), home {home}")
        print_services(console, supervisor, bus)
        work = asyncio.create_task(body(js, stop))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait([work, stopper], return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        stop.set()
        console.print("stopping ...")
        await supervisor.stop()
        if watcher is not None:
            await asyncio.gather(watcher, return_exceptions=True)
        await close(nc)
        if bus is not None:
            bus.stop()
        print_services(console, supervisor, bus)
        if work.done():
            work.result()  # re-raise what the body raised
        else:
            work.cancel()
    finally:
        if watcher is not None:
            watcher.cancel()
        if bus is not None:
            bus.stop()
        home_mod.clear_bus_file(home)


async def run_up(config: Config, home: Path, config_path: str | None, nats_url: str | None, run_for: float,
                 console: Console) -> None:
    async def body(js, stop: asyncio.Event) -> None:
        console.print(f"log: {home_mod.log_file(home)}; try `agentnas --home {home} runs`. Ctrl-C stops.")
        watching = asyncio.create_task(watch_active_runs(home, console, stop))
        try:
            if run_for > 0:
                await asyncio.wait_for(stop.wait(), run_for)
            else:
                await stop.wait()
        except asyncio.TimeoutError:
            pass
        finally:
            watching.cancel()

    await run_system(config, home, config_path, nats_url, console, body)


async def watch_active_runs(home: Path, console: Console, stop: asyncio.Event) -> None:
    """The progress of every run that has not ended (a run continued after an interruption, or one
    requested from elsewhere), one line per notable event, prefixed with the run id."""
    from agentnas.ops.progress import Follower
    from agentnas.store.log import EventLog, LogError

    followers: dict[str, Follower] = {}
    while not stop.is_set():
        try:
            with EventLog(home_mod.log_file(home), readonly=True) as log:
                active = [r.run_id for r in log.runs() if r.status in ("requested", "running")]
        except LogError:
            active = []
        for run_id in active:
            if run_id not in followers:
                console.print(f"following run {run_id} (`agentnas --home {home} status {run_id}`)", highlight=False)
                followers[run_id] = Follower(home_mod.log_file(home), run_id, home, console, prefix=f"[{run_id}] ")
        for run_id, follower in list(followers.items()):
            follower.poll()
            follower.print_plain()
            if follower.ended:
                console.print(f"run {run_id}: {follower.state.status}", highlight=False)
                del followers[run_id]
        await asyncio.sleep(1.0)


def print_services(console: Console, supervisor: Supervisor, bus: EmbeddedBus | None = None) -> None:
    table = Table("service", "pid", "status", "restarts")
    if bus is not None:
        table.add_row("nats-server", str(bus.pid), bus.status, str(bus.restarts))
    for state in supervisor.states.values():
        table.add_row(state.name, str(state.pid), state.status, str(state.restarts))
    console.print(table)
