"""Recorded evaluation results, served to a re-execution of the run that recorded them.

`agentnas run --llm replay:LOG#RUN` re-executes a recorded run: every LLM answer comes from
the recording, so Phases 1-2 ask the trainer for the very same evaluations again. Training
them again would only spend device time to reach the recorded numbers (on another machine,
slightly different numbers, which then make the replayed prompts diverge). So before the
run starts, its recorded results are loaded into the `eval_recorded` bucket under the new
run's id and the content key of the request that produced them (ops/recorded.py); a trainer
serves a request whose key is there from the bucket, marked `reused_from`, and trains only
what the recording never asked for (a different Phase 3, `--algo rs`).

The content key is everything that decides an evaluation's outcome: the request with its
labels (eval id, architecture id, phase) blanked. Recorded results of the machinery's
faults (dead-lettered requests) are never loaded: the re-execution trains those.
"""

from __future__ import annotations

import hashlib

import msgspec
from nats.js import api
from nats.js.errors import BucketNotFoundError, KeyNotFoundError

from agentnas.bus import messages as m

RECORDED_BUCKET = "eval_recorded"
RECORDED_TTL_S = 7 * 24 * 3600.0  # a re-execution resumed within a week still finds its recording
DEAD_LETTERED = "dead-lettered"  # the reason's prefix the trainer gives a request it gave up on


def request_key(req: m.EvaluationRequested) -> str:
    """The content key of an evaluation request (its labels do not change the outcome)."""
    content = msgspec.json.encode(msgspec.structs.replace(req, eval_id="", arch_id="", phase=0))
    # as the bus carries it: a request built with 120 where the type says 120.0 has the same key
    canonical = msgspec.json.encode(msgspec.json.decode(content, type=m.EvaluationRequested))
    return hashlib.sha256(canonical).hexdigest()[:40]


def bucket_key(run_id: str, req_key: str) -> str:
    return f"{run_id}.{req_key}"


def reusable(done: m.EvaluationCompleted) -> bool:
    """A recorded outcome the candidate itself decided (not the machinery's dead-lettering)."""
    return not done.reason.startswith(DEAD_LETTERED)


async def recorded_bucket(js):
    try:
        return await js.key_value(RECORDED_BUCKET)
    except BucketNotFoundError:
        return await js.create_key_value(api.KeyValueConfig(bucket=RECORDED_BUCKET, history=1, ttl=RECORDED_TTL_S,
                                                            storage=api.StorageType.FILE))


async def load(js, run_id: str, results: list[tuple[str, m.EvaluationCompleted]]) -> int:
    """Offer `results` (content key, recorded result) to run `run_id`; returns how many."""
    kv = await recorded_bucket(js)
    for req_key, done in results:
        await kv.put(bucket_key(run_id, req_key), msgspec.json.encode(done))
    return len(results)


async def lookup(kv, run_id: str, req: m.EvaluationRequested) -> m.EvaluationCompleted | None:
    try:
        entry = await kv.get(bucket_key(run_id, request_key(req)))
    except KeyNotFoundError:
        return None
    if entry.value is None:  # deleted or expired
        return None
    return msgspec.json.decode(entry.value, type=m.EvaluationCompleted)
