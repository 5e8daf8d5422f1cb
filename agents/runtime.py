"""The service loop every agent runs in.

An agent follows only the runs that have not ended: it learns which from the last
lifecycle event of every run in the EVENTS stream (`run.requested` ... `run.finished`,
one ordered consumer, last per subject, which survives any restart), and replays each
active run's events from the start with an ordered consumer filtered to that run. So it
starts in time proportional to its own runs, not to the whole history. Each run's events
are folded into the one run state (`store/state`); once a run is caught up, the agent asks
its role what work is due. Each piece of due work has a key; work with a key already in
flight is not started twice, and work that publishes its events changes the state so that
it is no longer due. A role is therefore a pure function of the state plus the effects it
performs; nothing else is kept in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Protocol

import msgspec
import structlog
from nats.js import api

from agentnas.agents.roles import RoleError, load_role
from agentnas.bus import messages as m
from agentnas.bus import subjects
from agentnas.bus.config import Config
from agentnas.bus.connect import close, connect, ensure_streams
from agentnas.bus.health import Health
from agentnas.bus.publish import is_bus_fault, publish, publish_until_done
from agentnas.store.state import RunState, fold

log = structlog.get_logger("agentnas.agent")

Emit = Callable[..., Awaitable[m.Envelope]]


class Work(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    run_id: str
    action: Any  # a coroutine function taking (Context) and returning None


class Context:
    """What a piece of work may use: the state it was derived from and a way to publish."""

    def __init__(self, agent: "AgentService", state: RunState, key: str = "") -> None:
        self.agent = agent
        self.state = state
        self.run_id = state.run_id
        self.key = key  # the work's key: the same work gets the same LLM call ids when it is retried
        self.calls = 0
        self.emitted: list[str] = []
        self.last_response_id: str | None = None  # the latest llm.responded we emitted: decisions cite it

    async def emit(self, payload: m.Kind, causation_id: str | None = None, event_id: str | None = None) -> m.Envelope:
        if event_id is None and isinstance(payload, (m.LlmRequested, m.LlmResponded)):
            suffix = "req" if isinstance(payload, m.LlmRequested) else "res"
            event_id = f"llm-{payload.call_id}-{suffix}"  # a retried publish is a duplicate
        elif event_id is None and isinstance(payload, m.EvaluationRequested):
            # one request per evaluation, whoever asks twice (a retry, two pieces of work racing):
            # the stream and the log drop the second, so it is never trained (paid for) twice
            event_id = f"requested-{payload.eval_id}"
        env = m.make_event(payload, run_id=self.run_id, sender=self.agent.sender, causation_id=causation_id, id=event_id)
        self.agent.unseen.add(env.id)
        self.emitted.append(env.id)
        # through a bus outage of up to ten minutes (an LLM answer already paid for must not be lost)
        await publish_until_done(self.agent.js, env, what=f"{self.agent.role.name} decision")
        return env

    def now(self) -> float:
        return time.time()

    def call_id(self, wire: list[dict]) -> str:
        """The n-th LLM call of this work with these messages: the same id when the work is retried."""
        self.calls += 1
        digest = hashlib.sha256(msgspec.json.encode([self.run_id, self.key, self.calls, wire])).hexdigest()
        return digest[:32]

    def llm(self, agent: str):
        """A recording LLM client for this piece of work (its events cite the run and the work)."""
        return self.agent.client_for(self, agent)

    def latest_state(self) -> RunState:
        return self.agent.states.get(self.run_id, self.state)


class Role(Protocol):
    name: str

    def due(self, state: RunState) -> list[Work]: ...


class AgentService:
    def __init__(self, role: Role, js, config: Config, home: Path) -> None:
        self.role, self.js, self.config, self.home = role, js, config, home
        self.sender = m.Sender(agent=role.name, instance=f"{socket.gethostname()}:{os.getpid()}")
        self.states: dict[str, RunState] = {}
        self.in_flight: dict[str, asyncio.Task] = {}
        self.feeds: dict[str, Any] = {}  # run id -> its ordered consumer
        self.roles: dict[str, Role] = {}  # module:Class -> an instance, for runs that name their own
        self.caught_up: set[str] = set()  # runs replayed up to the end of the stream
        self.ended: set[str] = set()
        self.seen: set[str] = set()  # runs met in the lifecycle snapshot
        self.snapshot_read = False
        self.failures: dict[str, int] = {}
        self.unseen: set[str] = set()  # ids we published that the stream has not brought back yet
        self._replay = None  # one replay source per process, shared by its clients

    def client_for(self, ctx: Context, agent: str):
        """A recording LLM client whose events go out through this piece of work."""
        from agentnas.agents.llm import make_client
        from agentnas.agents.llm_settings import Ledger, LlmSettings

        run = ctx.state.settings
        settings = LlmSettings.from_config(self.config.llm, run.llm_spec or None, on_divergence=run.on_divergence)
        # the caps are the run's, fixed when it was requested
        settings = msgspec.structs.replace(settings, token_cap=run.llm_caps.token_cap,
                                           cost_cap_usd=run.llm_caps.cost_cap_usd)

        async def emit(payload: m.Kind) -> None:
            env = await ctx.emit(payload)
            if isinstance(payload, m.LlmResponded):
                ctx.last_response_id = env.id

        if settings.replaying and self._replay is None:
            from agentnas.agents.replay import ReplaySource

            self._replay = ReplaySource.from_spec(settings.replay_path, settings.replay_run or None)
        ledger = Ledger.for_settings(settings, ctx.latest_state().llm)  # caps count the whole run's spending
        return make_client(settings, agent, emit, ledger, replay=self._replay, call_ids=ctx.call_id)

    def on_event(self, env: m.Envelope) -> None:
        self.unseen.discard(env.id)
        if env.run_id == subjects.SYSTEM_RUN or isinstance(env.payload, (m.EvaluationProgress, m.AgentHeartbeat)):
            return
        state = self.states.get(env.run_id) or RunState(run_id=env.run_id)
        self.states[env.run_id] = fold(state, env)

    def role_for(self, state: RunState) -> Role:
        """This process's role, or the implementation the run asked for (RunSettings.roles)."""
        path = state.settings.roles.get(self.role.name, "")
        if not path:
            return self.role
        if path not in self.roles:
            try:
                self.roles[path] = load_role(path, self.role.name)(self.config, self.home)
            except RoleError as exc:
                log.error("the run's role cannot be loaded; using this process's own", error=str(exc))
                self.roles[path] = self.role
        return self.roles[path]

    def dispatch(self) -> None:
        """Start every due piece of work that is not already running."""
        for run_id, state in self.states.items():
            if run_id not in self.caught_up or not state.requested or state.ended:
                continue
            for work in self.role_for(state).due(state):
                if work.key in self.in_flight:
                    continue
                task = asyncio.create_task(self._perform(work, state), name=work.key)
                self.in_flight[work.key] = task

    async def _perform(self, work: Work, state: RunState) -> None:
        structlog.contextvars.bind_contextvars(run_id=work.run_id, agent=self.role.name, work=work.key)
        context = Context(self, state, work.key)
        try:
            await work.action(context)
            self.failures.pop(work.key, None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if is_bus_fault(exc):
                # The bus is away: not the work's fault. Wait and let the work become due again;
                # the events it already published are duplicates when it publishes them again.
                log.warning("bus unavailable; work will be retried", key=work.key, error=str(exc) or type(exc).__name__)
                await self._wait_for_bus()
                return
            if await self._decisive_failure(context, exc):
                return
            # Infrastructure trouble (bus, provider outage after retries): log it, let the
            # work become due again after a pause, and give up on the run after repeated failures.
            count = self.failures[work.key] = self.failures.get(work.key, 0) + 1
            log.exception("work failed", key=work.key, attempt=count, error=str(exc))
            if count >= 3:
                await Context(self, state).emit(m.RunFailed(reason=f"{self.role.name}: {work.key} failed {count} times: {exc}"[:500]))
            else:
                await asyncio.sleep(2.0 * count)
        finally:
            # Keep the key in flight until our own events have come back through the stream,
            # so the same work is not derived again from a state that does not show it yet.
            for _ in range(1000):
                if not self.unseen.intersection(context.emitted) or context.run_id in self.ended:
                    break
                await asyncio.sleep(0.01)
            self.in_flight.pop(work.key, None)

    async def _wait_for_bus(self, poll_s: float = 1.0) -> None:
        """Until the connection is back (the client reconnects by itself)."""
        nc = getattr(self.js, "_nc", None)
        await asyncio.sleep(poll_s)
        while nc is not None and not nc.is_connected:
            await asyncio.sleep(poll_s)

    async def _heartbeat(self, stop: asyncio.Event, every_s: float = 15.0) -> None:
        while not stop.is_set():
            await asyncio.sleep(every_s)
            busy = sorted(self.in_flight)
            try:
                await publish(self.js, m.make_event(
                    m.AgentHeartbeat(role=self.role.name, busy=bool(busy), detail=", ".join(busy)[:300]),
                    run_id=subjects.SYSTEM_RUN, sender=self.sender))
            except Exception as exc:  # the bus may be away for a moment; the next beat will tell
                log.warning("heartbeat not published", error=str(exc))

    async def _decisive_failure(self, context: Context, exc: Exception) -> bool:
        """Failures that retrying cannot fix end the phase or the run at once, with the reason."""
        from agentnas.agents.llm_settings import BudgetExceeded
        from agentnas.agents.replay import ReplayDivergence, ReplayError

        if isinstance(exc, BudgetExceeded):
            log.warning("LLM cap reached; stopping the phase", error=str(exc))
            if context.latest_state().phase1.stopped is None:
                await context.emit(m.PhaseStopped(phase=1, reason=f"LLM cap: {exc}"))
            return True
        if isinstance(exc, (ReplayDivergence, ReplayError)):
            log.error("replay failed", error=str(exc))
            await context.emit(m.RunFailed(reason=str(exc)))
            return True
        return False

    async def follow(self, run_id: str, queue: asyncio.Queue) -> None:
        """Replay one run's events from its start, then keep following it."""
        async def on_msg(msg) -> None:
            queue.put_nowait((run_id, msg))

        feed = await self.js.subscribe(subjects.run_events_filter(run_id), ordered_consumer=True, cb=on_msg,
                                       deliver_policy=api.DeliverPolicy.ALL)
        self.feeds[run_id] = feed
        log.info("following run", run_id=run_id)

    async def forget(self, run_id: str) -> None:
        """The run ended: stop following it and drop its state."""
        self.ended.add(run_id)
        feed = self.feeds.pop(run_id, None)
        if feed is not None:
            try:
                await feed.unsubscribe()
            except Exception as exc:  # the bus may be away; the consumer is ephemeral in any case
                log.warning("could not unsubscribe from an ended run", run_id=run_id, error=str(exc))
        self.states.pop(run_id, None)
        self.caught_up.discard(run_id)

    async def on_lifecycle(self, msg, queue: asyncio.Queue) -> None:
        """The newest lifecycle event of a run: follow it if it has not ended, forget it if it has.

        The first events are a snapshot (the last one per subject); a run's `run.requested`
        comes before its `run.finished` there, so the snapshot is read whole before any run is
        followed, and a finished run is never replayed."""
        run_id, kind = subjects.parse_event_subject(msg.subject)
        if run_id is not None and run_id != subjects.SYSTEM_RUN and run_id not in self.ended:
            if kind in subjects.RUN_END_KINDS:
                self.ended.add(run_id)
                if run_id in self.feeds:
                    await self.forget(run_id)
            elif self.snapshot_read and run_id not in self.feeds:
                await self.follow(run_id, queue)
            elif not self.snapshot_read:
                self.seen.add(run_id)
        if not self.snapshot_read and msg.metadata.num_pending == 0:
            await self.end_of_snapshot(queue)

    async def end_of_snapshot(self, queue: asyncio.Queue) -> None:
        self.snapshot_read = True
        for run_id in sorted(self.seen - self.ended):
            await self.follow(run_id, queue)
        self.seen.clear()

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def on_lifecycle(msg) -> None:
            queue.put_nowait((None, msg))

        # The last lifecycle event of every run still in the stream, then every new one: which
        # runs are active. Finished runs are never replayed.
        lifecycle = await self.js.subscribe(subjects.RUN_LIFECYCLE_FILTER, ordered_consumer=True, cb=on_lifecycle,
                                            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT)
        await publish(self.js, m.make_event(m.AgentStarted(role=self.role.name, pid=os.getpid(), host=socket.gethostname()),
                                            run_id=subjects.SYSTEM_RUN, sender=self.sender))
        if ready is not None:
            ready.set()
        log.info("agent started", role=self.role.name)
        heartbeat = asyncio.create_task(self._heartbeat(stop))
        while not stop.is_set():
            try:
                run_id, msg = await asyncio.wait_for(queue.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if not self.snapshot_read:
                    await self.end_of_snapshot(queue)  # no lifecycle event in the stream at all
                self.dispatch()
                continue
            if run_id is None:
                await self.on_lifecycle(msg, queue)
            elif run_id in self.feeds:
                try:
                    env = m.decode(msg.data)
                except m.UndecodableMessage:
                    env = None
                if env is not None:
                    self.on_event(env)
                if msg.metadata.num_pending == 0:
                    self.caught_up.add(run_id)  # replayed up to the end of the stream
            if queue.empty():
                self.dispatch()
        heartbeat.cancel()
        for feed in [lifecycle, *self.feeds.values()]:
            await feed.unsubscribe()
        for task in self.in_flight.values():
            task.cancel()
        await asyncio.gather(*self.in_flight.values(), return_exceptions=True)


async def serve_role(role_factory: Callable[[Config, Path], Role], url: str, config: Config, home: Path,
                     *, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
    async with AsyncExitStack() as stack:
        role = role_factory(config, home)
        nc = await connect(url, config.bus, name=f"agentnas-{role.name}", health=Health(home, role.name))
        stack.push_async_callback(close, nc)
        js = nc.jetstream()
        await ensure_streams(js)
        service = AgentService(role, js, config, home)
        await service.run(stop, ready)
        await publish(js, m.make_event(m.AgentStopped(role=role.name), run_id=subjects.SYSTEM_RUN, sender=service.sender))
