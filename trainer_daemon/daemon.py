"""The trainer daemon: pulls evaluation requests from the EVAL work queue and trains them.

One daemon per device (`cuda:N` or `cpu`) trains up to `concurrency` candidates at once,
each in a sandboxed worker (sandbox.py) with its own memory cap: a child forked per job on
CPU, a worker process serving up to `worker_jobs` candidates in turn on a GPU. For each
request it publishes `evaluation.started`, per-epoch `evaluation.progress` and exactly one
`evaluation.completed`:

- the completed event's id is derived from the eval id, so a second completion (a
  redelivery racing a slow ack) is dropped by JetStream's duplicate window and by the
  log's unique id;
- completed results are also kept in a key-value bucket, so a request whose result
  exists is acked without training again, on any machine;
- while training, the request is kept alive with in-progress acks; a daemon killed
  mid-evaluation leaves the request unacked and JetStream hands it to a daemon again;
- the delivery after the last allowed one becomes a completed event with status `error`
  (dead-lettered), never silence;
- a request that a re-executed run's recording already answered is served from that
  recording, not trained (recorded.py).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import time
from contextlib import AsyncExitStack
from pathlib import Path

import msgspec
import structlog
from nats.errors import TimeoutError as NatsTimeout
from nats.js import api
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError

from agentnas.bus import messages as m
from agentnas.bus import subjects
from agentnas.bus.config import BusConfig, TrainerConfig
from agentnas.bus.connect import close, connect, ensure_streams
from agentnas.bus.health import Health
from agentnas.bus.publish import heartbeat, is_bus_fault, publish, publish_until_done
from agentnas.trainer_daemon import recorded as rec
from agentnas.trainer_daemon.job import Job, JobResult, weights_file
from agentnas.trainer_daemon.sandbox import Limits, WorkerPool

log = structlog.get_logger("agentnas.trainer")

RESULTS_BUCKET = "eval_results"
DEFAULT_WORKER_JOBS = 32  # GPU workers: candidates per process (a CUDA context and warm kernels reused)


def consumer_config(ack_wait_s: float) -> api.ConsumerConfig:
    return api.ConsumerConfig(
        durable_name=subjects.TRAINERS_DURABLE,
        filter_subject=subjects.EVAL_REQUESTS_FILTER,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=ack_wait_s,  # in-progress acks every third of this keep a long training alive
        max_deliver=-1,  # we count deliveries ourselves so the last one becomes an `error` result
        max_ack_pending=10_000,
    )


class StoredResult(msgspec.Struct, frozen=True, kw_only=True):
    """What the results bucket keeps per evaluation: THE result (see Trainer.settle)."""

    run_id: str
    completed: m.EvaluationCompleted | None = None
    published: bool = False  # its completed event reached the stream


def completed_id(eval_id: str) -> str:
    return f"completed-{eval_id}"


def completed_event(req: m.EvaluationRequested, result: JobResult, *, attempt: int, wall_s: float) -> m.EvaluationCompleted:
    return m.EvaluationCompleted(
        eval_id=req.eval_id,
        status=result.status,
        reason=result.reason,
        request=req.request,
        arch_id=req.arch_id,
        val_metric=result.val_metric,
        test_metric=result.test_metric,
        metric_name=result.metric_name,
        params=result.params,
        flops=result.flops,
        peak_memory_mb=result.peak_memory_mb,
        device_time_s=result.device_time_s,
        wall_time_s=round(wall_s, 3),
        epochs_done=result.epochs_done,
        best_epoch=result.best_epoch,
        weights_path=result.weights_path,
        warnings=list(result.warnings),
        traceback=result.traceback,
        attempt=attempt,
        phase=req.phase,
        first_step_at=result.first_step_at,
        choices=result.choices,
        max_abs_diff=result.max_abs_diff,
    )


def job_for(req: m.EvaluationRequested, weights_dir: Path) -> Job:
    """The harness's job for a request; only full training writes weights (into `weights_dir`)."""
    return Job(
        eval_id=req.eval_id,
        request=req.request,
        model_source=req.model_source,
        recipe=req.recipe,
        time_cap_s=req.caps.time_s,
        memory_cap_mb=req.caps.memory_mb,
        seed=req.seed,
        weights_dir=str(weights_dir) if req.request in ("final_wave1", "final_wave2") else "",
        reference_source=req.reference_source,
        equivalence=req.equivalence,
        space=req.space,
        gdas=req.gdas,
    )


def progress_event(eval_id: str, progress: dict) -> m.EvaluationProgress:
    """An `evaluation.progress` from one progress line of the harness."""
    return m.EvaluationProgress(eval_id=eval_id, epoch=progress["epoch"], epochs=progress["epochs"],
                                train_loss=progress["train_loss"], val_metric=progress.get("val_metric"),
                                device_time_s=progress.get("device_time_s", 0.0), choices=progress.get("choices"))


class Trainer:
    """The daemon's state: its pools of warm workers and the jobs running now."""

    def __init__(self, js, kv, *, device: str, concurrency: int, config: TrainerConfig, home: Path,
                 health: Health | None = None, recorded_kv=None) -> None:
        self.js, self.kv, self.recorded_kv = js, kv, recorded_kv
        self.device, self.concurrency, self.config, self.home = device, concurrency, config, home
        self.sender = m.Sender(agent="trainer", instance=f"{socket.gethostname()}:{device}:{os.getpid()}")
        self.pools: dict[tuple, WorkerPool] = {}
        self.running: set[asyncio.Task] = set()
        # eval id -> deliveries that a fault of the machinery ended; kept in the results bucket too
        # (key `<eval id>.faults`), so that a restarted daemon does not charge them to the candidate
        self.faults: dict[str, int] = {}
        self.health = health or Health(None, "trainer")

    def limits(self, caps: m.Caps) -> Limits:
        threads = self.config.cpu_threads or max(1, (os.cpu_count() or 1) // self.concurrency)
        return Limits(memory_mb=caps.memory_mb, cpu_s=max(60.0, caps.time_s * threads * 2 + 120), threads=threads)

    async def pool_for(self, task: str, caps: m.Caps) -> WorkerPool:
        key = (task, caps.time_s, caps.memory_mb)
        pool = self.pools.get(key)
        if pool is None:
            pool = WorkerPool(task, self.device, spares=self.config.spare_workers or self.concurrency, limits=self.limits(caps),
                              scratch_root=self.home / "scratch", jobs_per_worker=self.config.worker_jobs or DEFAULT_WORKER_JOBS)
            self.pools[key] = pool
        return pool

    async def emit(self, payload: m.Kind, run_id: str, causation_id: str | None, event_id: str | None = None,
                   timeout: float = 10.0) -> None:
        await publish(self.js, m.make_event(payload, run_id=run_id, sender=self.sender, causation_id=causation_id,
                                            id=event_id), timeout=timeout)

    async def stored(self, eval_id: str) -> StoredResult | None:
        """What the bucket holds for `eval_id` (an entry of an older version: published, no payload)."""
        try:
            entry = await self.kv.get(eval_id)
        except KeyNotFoundError:
            return None
        try:
            return msgspec.json.decode(entry.value, type=StoredResult)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return StoredResult(run_id="", published=True)

    async def settle(self, run_id: str, done: m.EvaluationCompleted) -> m.EvaluationCompleted:
        """The one result of an evaluation is the first one written to the bucket; returns it.

        Two deliveries of the same request (a redelivery racing a slow ack) may both train;
        whichever writes first decides, and the completed event always carries the bucket's
        copy, so the log (which keeps the first `completed-<eval_id>`) and the bucket agree."""
        value = msgspec.json.encode(StoredResult(run_id=run_id, completed=done))
        delay = 0.5
        while True:
            try:
                await self.kv.create(done.eval_id, value)
                return done
            except KeyWrongLastSequenceError:
                stored = await self.stored(done.eval_id)
                return stored.completed if stored is not None and stored.completed is not None else done
            except Exception as exc:
                if not is_bus_fault(exc):
                    raise
                self.health.fault(f"cannot store the result of {done.eval_id}: {exc or type(exc).__name__}; retrying")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def finish(self, env: m.Envelope, req: m.EvaluationRequested, result: JobResult, attempt: int, wall_s: float) -> None:
        done = await self.settle(env.run_id, completed_event(req, result, attempt=attempt, wall_s=wall_s))
        await self.publish_result(env, done)
        log.info("evaluation completed", eval_id=req.eval_id, status=done.status, val=done.val_metric,
                 reason=done.reason, wall_s=round(wall_s, 2))

    async def publish_result(self, env: m.Envelope, done: m.EvaluationCompleted) -> None:
        event = m.make_event(done, run_id=env.run_id, sender=self.sender, causation_id=env.id,
                             id=completed_id(done.eval_id))
        await publish_until_done(self.js, event, give_up_after_s=24 * 3600.0, what="evaluation result")
        self.health.clear()
        try:  # so that a redelivery need not publish it again (it would be a duplicate in any case)
            await self.kv.put(done.eval_id, msgspec.json.encode(StoredResult(run_id=env.run_id, completed=done,
                                                                             published=True)))
        except Exception as exc:
            log.warning("could not mark the result published", eval_id=done.eval_id, error=str(exc))

    async def fault_count(self, eval_id: str) -> int:
        if eval_id not in self.faults:
            try:
                entry = await self.kv.get(f"{eval_id}.faults")
                self.faults[eval_id] = int(entry.value or b"0")
            except KeyNotFoundError:
                self.faults[eval_id] = 0
        return self.faults[eval_id]

    async def add_fault(self, eval_id: str) -> int:
        """One more delivery ended by the machinery; returns how many so far."""
        count = self.faults[eval_id] = await self.fault_count(eval_id) + 1
        try:
            await self.kv.put(f"{eval_id}.faults", str(count).encode())
        except Exception as exc:  # the bus is what failed: this daemon still remembers it
            log.warning("could not store the fault count", eval_id=eval_id, error=str(exc) or type(exc).__name__)
        return count

    async def interrupted(self, env: m.Envelope, req: m.EvaluationRequested, msg, fault: str, attempt: int) -> None:
        """Not the candidate's fault: say so, and let the request come back after a pause."""
        count = await self.add_fault(req.eval_id)
        delay = min(5.0 * 2 ** (count - 1), 60.0)
        log.warning("evaluation interrupted by a fault of the machinery; it will be retried", eval_id=req.eval_id,
                    fault=fault, retry_in_s=delay)
        if count >= 3:
            self.health.fault(f"{req.eval_id}: {fault} ({count} times); retrying every {delay:g} s")
        try:
            await self.emit(m.EvaluationInterrupted(eval_id=req.eval_id, reason=fault[:300], attempt=attempt,
                                                    retry_in_s=delay), env.run_id, env.id)
        finally:
            await msg.nak(delay=delay)

    async def handle(self, msg) -> None:
        try:
            env = m.decode(msg.data)
        except m.UndecodableMessage as exc:
            log.warning("undecodable evaluation request terminated", error=str(exc)[:200])
            await msg.term()  # the recorder keeps it as message.rejected
            return
        req = env.payload
        if not isinstance(req, m.EvaluationRequested):
            await msg.term()
            return
        attempt = msg.metadata.num_delivered
        structlog.contextvars.bind_contextvars(run_id=env.run_id, eval_id=req.eval_id)
        stored = await self.stored(req.eval_id)
        if stored is not None:
            log.info("the evaluation has its result; not training again", eval_id=req.eval_id)
            if not stored.published and stored.completed is not None:
                await self.publish_result(env, stored.completed)  # it may never have reached the stream
            await msg.ack()
            return
        reused = await self.reuse(env, req, attempt)
        if reused is not None:
            done = await self.settle(env.run_id, reused)
            await self.publish_result(env, done)
            log.info("evaluation served from the recording", eval_id=req.eval_id, reused_from=done.reused_from)
            await msg.ack()
            return
        if attempt - await self.fault_count(req.eval_id) > self.config.max_deliver:
            reason = (f"{rec.DEAD_LETTERED}: delivered {attempt - 1} times without a result "
                      "(trainer killed or stuck each time)")
            await self.finish(env, req, JobResult(status="error", reason=reason), attempt, 0.0)
            await msg.ack()
            return
        await self.emit(m.EvaluationStarted(eval_id=req.eval_id, device=self.device, worker=self.sender.instance,
                                            attempt=attempt), env.run_id, env.id)
        keepalive = asyncio.create_task(self._keep_alive(msg))
        start = time.monotonic()
        try:
            result = await self.evaluate(env, req)
            if result.fault:
                await self.interrupted(env, req, msg, result.fault, attempt)
                return
            await self.finish(env, req, result, attempt, time.monotonic() - start)
        finally:
            keepalive.cancel()
        await msg.ack()

    async def reuse(self, env: m.Envelope, req: m.EvaluationRequested, attempt: int) -> m.EvaluationCompleted | None:
        """The recorded result of this very request when the run re-executes a recording, else None.
        Its weights are copied into this run's folder; a recording whose weights are not on this
        machine is trained again (the result's weights are part of what the run hands over)."""
        if self.recorded_kv is None:
            return None
        recorded = await rec.lookup(self.recorded_kv, env.run_id, req)
        if recorded is None:
            return None
        weights = ""
        if recorded.weights_path:
            source = Path(recorded.weights_path)
            if not source.is_file():
                log.info("the recorded weights are not here; training again", eval_id=req.eval_id, weights=str(source))
                return None
            target = Path(weights_file(str(self.home / "weights" / env.run_id), req.eval_id))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target.with_suffix(".tmp"))
            target.with_suffix(".tmp").replace(target)
            weights = str(target)
        # nothing ran here: no device or wall time spent on it in this run
        return msgspec.structs.replace(recorded, eval_id=req.eval_id, arch_id=req.arch_id, phase=req.phase,
                                       attempt=attempt, weights_path=weights, device_time_s=0.0, wall_time_s=0.0,
                                       first_step_at=None)

    async def evaluate(self, env: m.Envelope, req: m.EvaluationRequested) -> JobResult:
        job = job_for(req, self.home / "weights" / env.run_id)
        pool = await self.pool_for(req.task, req.caps)

        async def on_progress(p: dict) -> None:
            # progress is for people watching; a bus fault must never reach the job (it would look
            # like the candidate's timeout), so a progress line that cannot go out is dropped
            try:
                await self.emit(progress_event(req.eval_id, p), env.run_id, env.id, timeout=2.0)
            except Exception as exc:
                log.warning("progress not published", eval_id=req.eval_id, error=str(exc) or type(exc).__name__)

        return await pool.run(job, on_progress)

    async def _keep_alive(self, msg) -> None:
        while True:
            await asyncio.sleep(self.config.ack_wait_s / 3)
            await msg.in_progress()

    async def close(self) -> None:
        for task in self.running:
            task.cancel()
        await asyncio.gather(*self.running, return_exceptions=True)
        for pool in self.pools.values():
            await pool.close()


async def results_bucket(js):
    try:
        return await js.key_value(RESULTS_BUCKET)
    except BucketNotFoundError:
        return await js.create_key_value(api.KeyValueConfig(bucket=RESULTS_BUCKET, history=1,
                                                            storage=api.StorageType.FILE))


async def serve(
    url: str,
    home: Path,
    *,
    device: str,
    concurrency: int,
    config: TrainerConfig = TrainerConfig(),
    bus: BusConfig = BusConfig(),
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
    warm_tasks: tuple[str, ...] = (),
) -> None:
    """Run one trainer daemon until `stop` is set."""
    async with AsyncExitStack() as stack:
        health = Health(home, f"trainer-{device.replace(':', '')}")
        nc = await connect(url, bus, name=f"agentnas-trainer-{device}", health=health)
        stack.push_async_callback(close, nc)
        js = nc.jetstream()
        await ensure_streams(js)
        kv = await results_bucket(js)
        trainer = Trainer(js, kv, device=device, concurrency=concurrency, config=config, home=home, health=health,
                          recorded_kv=await rec.recorded_bucket(js))
        stack.push_async_callback(trainer.close)
        for task in warm_tasks:  # start workers before the first request arrives
            await (await trainer.pool_for(task, m.Caps())).start()
        sub = await js.pull_subscribe(subjects.EVAL_REQUESTS_FILTER, durable=subjects.TRAINERS_DURABLE,
                                      stream=subjects.EVAL_STREAM, config=consumer_config(config.ack_wait_s))
        await trainer.emit(m.AgentStarted(role="trainer", pid=os.getpid(), host=socket.gethostname(),
                                          version=device), subjects.SYSTEM_RUN, None)
        log.info("trainer started", device=device, concurrency=concurrency)
        beat = asyncio.create_task(heartbeat(js, trainer.sender, "trainer", stop,
                                             detail=lambda: f"{len(trainer.running)} of {concurrency} slots busy"
                                             if trainer.running else ""))
        stack.callback(beat.cancel)
        if ready is not None:
            ready.set()
        while not stop.is_set():
            free = concurrency - len(trainer.running)
            if free <= 0:
                await asyncio.wait(trainer.running, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                msgs = await sub.fetch(free, timeout=0.5)
            except (NatsTimeout, asyncio.TimeoutError):
                continue  # an empty fetch is normal
            for msg in msgs:
                task = asyncio.create_task(_guarded(trainer, msg))
                trainer.running.add(task)
                task.add_done_callback(trainer.running.discard)
        await sub.unsubscribe()
        await trainer.emit(m.AgentStopped(role="trainer"), subjects.SYSTEM_RUN, None)
        log.info("trainer stopped")


async def _guarded(trainer: Trainer, msg) -> None:
    try:
        await trainer.handle(msg)
    except asyncio.CancelledError:
        raise  # shutting down: the request stays unacked and is redelivered
    except Exception as exc:  # infrastructure trouble (bus down, a full disk): let another delivery try
        log.exception("evaluation handling failed; will be redelivered", error=str(exc))
        # this delivery was the machinery's, not the candidate's: it does not count toward dead-lettering
        try:
            eval_id = m.decode(msg.data).payload.eval_id
        except Exception:
            eval_id = ""
        if eval_id:
            try:
                count = await trainer.add_fault(eval_id)
            except Exception:  # the bucket cannot be read either: remember it here
                count = trainer.faults[eval_id] = trainer.faults.get(eval_id, 0) + 1
            if count >= 3:  # retried without end, so it must show (as `interrupted` does)
                trainer.health.fault(f"{eval_id}: handling failed {count} times ({str(exc)[:200] or type(exc).__name__}); "
                                     "retrying every 5 s")
        try:
            await msg.nak(delay=5)
        except Exception:
            pass
