"""The trainer daemon on a real bus: requests in, started/progress/completed out, exactly once."""

import asyncio
import os
import signal
import subprocess

import msgspec
import pytest

from agentnas.bus import messages as m
from agentnas.bus.config import TrainerConfig
from agentnas.bus.publish import publish
from agentnas.trainer_daemon.daemon import serve
from tests.conftest import agentnas_cmd, wait_until

pytestmark = pytest.mark.integration
S = m.Sender(agent="test")

SMALL_CNN = """
import torch
from torch import nn

class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(32, 28)

    def forward(self, x):
        return self.head(self.body(x))
"""

DENSE = """
import torch
from torch import nn

class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.GELU(), nn.Conv2d(16, 1, 3, padding=1))

    def forward(self, x):
        return x + self.net(x)
"""

SLOW = SMALL_CNN.replace("nn.Linear(32, 28)", "nn.Sequential(*[nn.Linear(32, 32) for _ in range(40)], nn.Linear(32, 28))")


class Collector:
    """Every event of a run, as decoded envelopes, from a plain NATS subscription."""

    def __init__(self):
        self.events: list[m.Envelope] = []

    async def start(self, js, run_id):
        self.sub = await js._nc.subscribe(f"agentnas.evt.{run_id}.>", cb=self._on)
        return self

    async def _on(self, msg):
        self.events.append(m.decode(msg.data))

    def of(self, kind, eval_id=None):
        return [e.payload for e in self.events if e.kind == kind and (eval_id is None or e.payload.eval_id == eval_id)]


def request(eval_id, kind, task="addigits", source=SMALL_CNN, recipe=None, **kw):
    recipe = recipe or {"optimizer": "adamw", "lr": 0.003, "epochs": 3, "batch_size": 128}
    return m.EvaluationRequested(eval_id=eval_id, request=kind, task=task, model_source=source, recipe=recipe,
                                 caps=m.Caps(time_s=120, memory_mb=4096), **kw)


async def submit(js, run_id, payload):
    env = m.make_event(payload, run_id=run_id, sender=S)
    await publish(js, env)
    return env


@pytest.fixture
async def daemon(js, nats_server, tmp_path):
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(nats_server.url, tmp_path, device="cpu", concurrency=2,
                                     config=TrainerConfig(ack_wait_s=6), stop=stop, ready=ready))
    await asyncio.wait_for(ready.wait(), 60)
    yield tmp_path
    stop.set()
    await asyncio.wait_for(task, 30)


async def test_every_request_kind_end_to_end(js, daemon):
    seen = await Collector().start(js, "kinds")
    await submit(js, "kinds", request("v", "validate"))
    await submit(js, "kinds", request("p", "proxy", recipe={"epochs": 7, "lr": 0.003}))
    await submit(js, "kinds", request("w1", "final_wave1", task="digitsmooth", source=DENSE, recipe={"epochs": 2}))
    await submit(js, "kinds", request("w2", "final_wave2", task="digitsmooth", source=DENSE, recipe={"epochs": 2}))
    await wait_until(lambda: len(seen.of("evaluation.completed")) == 4, timeout=180, what="4 results")
    done = {d.eval_id: d for d in seen.of("evaluation.completed")}
    assert {d.status for d in done.values()} == {"ok"}, {k: d.reason for k, d in done.items()}
    assert done["v"].params and done["v"].flops and done["v"].epochs_done == 0
    assert done["p"].epochs_done == 2 and len(seen.of("evaluation.progress", "p")) == 2  # round(0.3 * 7)
    assert done["p"].val_metric is not None and done["p"].test_metric is None
    assert done["w1"].best_epoch is not None and os.path.exists(done["w1"].weights_path)
    assert done["w2"].test_metric is not None and done["w2"].val_metric is None
    assert os.path.exists(done["w2"].weights_path) and str(daemon) in done["w2"].weights_path
    for d in done.values():
        assert len(seen.of("evaluation.started", d.eval_id)) == 1 and d.attempt == 1


async def test_bad_inputs_are_named_in_the_result(js, daemon):
    seen = await Collector().start(js, "bad")
    await submit(js, "bad", request("hostile", "validate", source="import os\nclass Architecture: pass\n"))
    await submit(js, "bad", request("lr", "proxy", recipe={"lr": -1, "epochs": 3}))
    await submit(js, "bad", request("json", "proxy", recipe='{"lr": 0.1,'))
    await submit(js, "bad", request("opt", "validate", recipe={"optimizer": "lion", "epochs": 1}))
    await wait_until(lambda: len(seen.of("evaluation.completed")) == 4, timeout=120, what="4 results")
    done = {d.eval_id: d for d in seen.of("evaluation.completed")}
    assert done["hostile"].status == "rejected" and "os" in done["hostile"].reason
    assert done["lr"].status == "rejected" and "lr" in done["lr"].reason
    assert done["json"].status == "rejected" and "JSON" in done["json"].reason
    assert done["opt"].status == "ok" and any("lion" in w for w in done["opt"].warnings)


async def test_a_result_already_logged_is_not_recomputed(js, daemon):
    seen = await Collector().start(js, "again")
    await submit(js, "again", request("once", "validate"))
    await wait_until(lambda: seen.of("evaluation.completed"), timeout=60, what="first result")
    await submit(js, "again", request("once", "validate"))  # a new envelope, the same evaluation
    await submit(js, "again", request("other", "validate"))
    await wait_until(lambda: len(seen.of("evaluation.completed")) == 2, timeout=60, what="second result")
    await asyncio.sleep(1)
    assert len(seen.of("evaluation.started", "once")) == 1
    assert len(seen.of("evaluation.completed", "once")) == 1


def start_daemon_process(processes, url, home, max_deliver=3):
    cfg = home / "trainer.toml"
    cfg.write_text(f"[trainer]\nack_wait_s = 4.0\nmax_deliver = {max_deliver}\n")
    proc = subprocess.Popen(agentnas_cmd("--home", str(home), "--config", str(cfg), "--log-format", "json",
                                         "trainer", "--nats-url", url, "--concurrency", "1"),
                            stdout=subprocess.DEVNULL, stderr=open(home / "trainer.err", "ab"))
    processes.append(proc)
    return proc


async def kill_mid_training(js, nats_server, processes, home, run_id, max_deliver):
    seen = await Collector().start(js, run_id)
    proc = start_daemon_process(processes, nats_server.url, home, max_deliver)
    await submit(js, run_id, request("long", "proxy", source=SLOW, recipe={"epochs": 17, "lr": 0.001}))
    await wait_until(lambda: seen.of("evaluation.progress", "long"), timeout=90, what="training under way")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return seen


async def test_kill_9_mid_evaluation_then_exactly_one_result(js, nats_server, processes, tmp_path):
    seen = await kill_mid_training(js, nats_server, processes, tmp_path, "crash", max_deliver=3)
    proc = start_daemon_process(processes, nats_server.url, tmp_path)
    try:
        await wait_until(lambda: seen.of("evaluation.completed"), timeout=180, what="result after redelivery")
        await asyncio.sleep(6)  # longer than ack_wait: a stray redelivery would show now
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    (done,) = seen.of("evaluation.completed")
    assert done.status == "ok" and done.attempt == 2
    assert [s.attempt for s in seen.of("evaluation.started")] == [1, 2]


async def test_last_delivery_becomes_an_error_result(js, nats_server, processes, tmp_path):
    seen = await kill_mid_training(js, nats_server, processes, tmp_path, "dead", max_deliver=1)
    proc = start_daemon_process(processes, nats_server.url, tmp_path, max_deliver=1)
    try:
        await wait_until(lambda: seen.of("evaluation.completed"), timeout=60, what="dead-letter result")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    (done,) = seen.of("evaluation.completed")
    assert done.status == "error" and "dead-lettered" in done.reason


@pytest.mark.parametrize(("device", "config", "fork", "jobs"), [
    ("cpu", TrainerConfig(), True, 1),  # a fresh forked child per job
    ("cpu", TrainerConfig(worker_jobs=8), True, 1),  # CPU pools always fork
    ("cuda:0", TrainerConfig(), False, 32),  # GPU default: a worker process serves 32 candidates
    ("cuda:0", TrainerConfig(worker_jobs=1), False, 1),  # a fresh process per candidate
])
async def test_worker_mode_follows_device_and_config(tmp_path, device, config, fork, jobs):
    from agentnas.trainer_daemon.daemon import Trainer

    trainer = Trainer(None, None, device=device, concurrency=2, config=config, home=tmp_path)
    pool = await trainer.pool_for("addigits", m.Caps())  # made, not started: no worker runs here
    assert (pool._fork, pool._jobs) == (fork, jobs)


async def test_the_first_result_in_the_bucket_is_the_result(js, tmp_path):
    """Two deliveries of one request that both trained (a redelivery after a bus outage): the first
    result written to the bucket wins, and the second delivery publishes that one, not its own."""
    from agentnas.bus.config import TrainerConfig
    from agentnas.trainer_daemon.daemon import StoredResult, Trainer, results_bucket

    kv = await results_bucket(js)
    trainer = Trainer(js, kv, device="cpu", concurrency=1, config=TrainerConfig(), home=tmp_path)
    first = m.EvaluationCompleted(eval_id="raced", status="timeout", reason="wall-clock limit", request="proxy")
    second = m.EvaluationCompleted(eval_id="raced", status="ok", val_metric=12.5, request="proxy")
    assert await trainer.settle("r", first) == first
    assert await trainer.settle("r", second) == first  # the bucket decided; the log will say the same
    stored = msgspec.json.decode((await kv.get("raced")).value, type=StoredResult)
    assert stored.completed == first and not stored.published


async def test_a_re_executed_run_is_served_its_recorded_results(js, daemon):
    """A re-execution (`run --llm replay:`) asks for the recording's evaluations again: served from
    the recording, weights copied into its own folder; anything else, or a recording whose
    weights are gone, is trained."""
    from agentnas.trainer_daemon import recorded

    first = await Collector().start(js, "recording")
    asked = [request("p", "proxy", arch_id="arch_001"),
             request("w", "final_wave1", task="digitsmooth", source=DENSE, recipe={"epochs": 2}),
             request("gone", "final_wave1", task="digitsmooth", source=DENSE, recipe={"epochs": 1})]
    for req in asked:
        await submit(js, "recording", req)
    await wait_until(lambda: len(first.of("evaluation.completed")) == 3, timeout=180, what="the recording")
    done = {d.eval_id: d for d in first.of("evaluation.completed")}
    os.remove(done["gone"].weights_path)
    offered = [(recorded.request_key(r), msgspec.structs.replace(done[r.eval_id], reused_from=f"recording/{r.eval_id}"))
               for r in asked]
    assert await recorded.load(js, "again", offered) == 3

    again = await Collector().start(js, "again")
    relabel = lambda r, i: msgspec.structs.replace(r, eval_id=f"again-{i}", arch_id=f"other-{i}", phase=3)  # noqa: E731
    for i, req in enumerate(asked):
        await submit(js, "again", relabel(req, i))
    await submit(js, "again", request("new", "proxy", recipe={"optimizer": "adamw", "lr": 0.001, "epochs": 3,
                                                              "batch_size": 128}))
    await wait_until(lambda: len(again.of("evaluation.completed")) == 4, timeout=180, what="the re-execution")
    served = {d.eval_id: d for d in again.of("evaluation.completed")}
    assert {e for e in served if again.of("evaluation.started", e)} == {"again-2", "new"}  # trained: these two
    proxy, wave1 = served["again-0"], served["again-1"]
    assert proxy.reused_from == "recording/p" and proxy.val_metric == done["p"].val_metric
    assert (proxy.arch_id, proxy.phase, proxy.device_time_s) == ("other-0", 3, 0.0)
    assert wave1.reused_from == "recording/w" and wave1.val_metric == done["w"].val_metric
    assert wave1.weights_path != done["w"].weights_path and "/again/" in wave1.weights_path
    assert os.path.exists(wave1.weights_path)
    assert served["again-2"].reused_from == "" and served["new"].reused_from == ""


def test_the_content_key_ignores_labels_only():
    from agentnas.trainer_daemon.recorded import request_key, reusable

    base = request("a", "proxy")
    assert request_key(base) == request_key(msgspec.structs.replace(base, eval_id="b", arch_id="x", phase=3))
    for change in ({"seed": 43}, {"model_source": SLOW}, {"recipe": {"lr": 0.1}}, {"request": "validate"},
                   {"caps": m.Caps(time_s=60)}, {"task": "digitsmooth"}):
        assert request_key(msgspec.structs.replace(base, **change)) != request_key(base), change
    assert reusable(m.EvaluationCompleted(eval_id="a", status="timeout", reason="ran past its time cap"))
    assert not reusable(m.EvaluationCompleted(eval_id="a", status="error", reason="dead-lettered: delivered 3 times"))


async def test_faults_of_the_machinery_are_remembered_across_a_daemon_restart(js, tmp_path):
    """Deliveries that a fault ended never count toward dead-lettering, even after the daemon
    that saw them is gone: the count lives in the results bucket."""
    from agentnas.trainer_daemon.daemon import Trainer, results_bucket

    kv = await results_bucket(js)
    first = Trainer(js, kv, device="cpu", concurrency=1, config=TrainerConfig(), home=tmp_path)
    assert await first.fault_count("restart-e1") == 0
    assert await first.add_fault("restart-e1") == 1 and await first.add_fault("restart-e1") == 2
    second = Trainer(js, kv, device="cpu", concurrency=1, config=TrainerConfig(), home=tmp_path)
    assert await second.fault_count("restart-e1") == 2 and await second.fault_count("restart-other") == 0


async def test_a_request_that_keeps_failing_in_the_daemon_is_retried_and_shows_as_paused(js, tmp_path):
    """An exception in the daemon itself (here: the recordings bucket unreadable, as on a full
    disk) is the machinery's: the request is put back, never dead-lettered, and from the third
    time on the trainer's health says so (the `paused:` line of `run` and `status`)."""
    from types import SimpleNamespace

    from agentnas.bus.health import Health
    from agentnas.trainer_daemon.daemon import Trainer, _guarded, results_bucket

    class Unreadable:
        async def get(self, key):
            raise OSError(28, "No space left on device")

    naks = []

    async def nak(delay=None):
        naks.append(delay)

    env = m.make_event(request("stuck-1", "validate"), run_id="stuck", sender=S)
    trainer = Trainer(js, await results_bucket(js), device="cpu", concurrency=1,
                      config=TrainerConfig(max_deliver=1), home=tmp_path, health=Health(None, "trainer-cpu"),
                      recorded_kv=Unreadable())
    for delivery in range(1, 5):
        msg = SimpleNamespace(data=msgspec.json.encode(env), metadata=SimpleNamespace(num_delivered=delivery),
                              nak=nak)
        await _guarded(trainer, msg)
        assert bool(trainer.health.current) == (delivery >= 3)
    assert naks == [5] * 4 and await trainer.fault_count("stuck-1") == 4
    assert "stuck-1: handling failed 4 times" in trainer.health.current and "No space left" in trainer.health.current
