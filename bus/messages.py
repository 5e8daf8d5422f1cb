"""Every message kind of agentnas, its envelope, and the one shared encoder/decoder.

Rules (the log keeps these forever):
- each kind is a frozen, keyword-only Struct with an explicit tag; never rename a tag;
- new fields get defaults; a field's type never changes; an incompatible change is a
  new kind that folds handle beside the old one;
- events do not forbid unknown fields (old readers skip new fields);
- an unknown kind decodes to `UnknownPayload`, it is never an error.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal, Union

import msgspec

from agentnas.bus.settings import RunSettings
from agentnas.bus.space import SlottedSpace

SCHEMA_VERSION = 1

# Statuses of a finished evaluation (PROTOCOL.md): only `ok` counts toward patience.
EvalStatus = Literal["ok", "rejected", "oom", "timeout", "error"]
# equivalence: does a rewrite compute what the original does (Modularizer, seed reproduction);
# gdas: a Gumbel-softmax search over a slotted space. Readers older than these two see the
# events as undecodable and keep them as unknown.
EvalKind = Literal["validate", "proxy", "final_wave1", "final_wave2", "equivalence", "gdas"]


class Kind(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind"):
    """Base of every payload; subclasses set an explicit `tag`."""


# --- runs -----------------------------------------------------------------------------


class RunRequested(Kind, tag="run.requested"):
    task: str
    phases: tuple[int, ...] = (1, 2, 3)
    config: dict[str, Any] = {}  # before typed settings: the configuration as plain data (old logs)
    note: str = ""
    settings: RunSettings | None = None  # the run's typed settings; None only in old logs


class RunStarted(Kind, tag="run.started"):
    pass


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """One architecture's final numbers: wave 1 selects, wave 2 reports (PROTOCOL.md)."""

    arch_id: str
    phase: int  # 1 or 3
    source: str
    recipe: dict[str, Any] = {}
    val_metric: float | None = None  # wave-1 validation (best epoch)
    test_metric: float | None = None  # wave-2 test (trained on train+valid, last weights)
    params: int | None = None
    flops: int | None = None
    weights_path: str = ""  # wave-2 weights
    eval_id: str = ""  # the wave-2 evaluation
    config_key: str = ""  # Phase 3: the slot configuration
    choices: list[tuple[str, str]] = []  # Phase 3: (slot, chosen alternative's description)


class PhaseCost(msgspec.Struct, frozen=True, kw_only=True):
    phase: str  # "1", "1.5", "2", "3", "final"
    wall_s: float = 0.0
    device_s: float = 0.0
    evaluations: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


class RunResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a finished run hands over."""

    winner: Outcome
    seed: Outcome | None = None  # the Phase 1 seed (the LLM-only result), when it is not the winner
    metric: str = ""  # the task's metric; every metric is an error: lower is better
    rule: str = ""  # how the winner was chosen (the reporting rule)
    phases: list[PhaseCost] = []
    # every architecture that completed wave 1, best validation first (source omitted: it is in
    # the log); test_metric where it had wave 2 (all of them unless `[proxy] wave2 = "reported"`)
    finalists: list[Outcome] = []


class RunFinished(Kind, tag="run.finished"):
    summary: dict[str, Any] = {}
    result: RunResult | None = None


class RunFailed(Kind, tag="run.failed"):
    reason: str


# --- agents and services ----------------------------------------------------------------


class AgentStarted(Kind, tag="agent.started"):
    role: str
    pid: int
    host: str
    version: str = ""


class AgentStopped(Kind, tag="agent.stopped"):
    role: str
    reason: str = "shutdown"


class AgentHeartbeat(Kind, tag="agent.heartbeat"):
    role: str
    busy: bool = False
    detail: str = ""


class ServiceExited(Kind, tag="service.exited"):
    """A supervised child process ended without being asked to."""

    service: str
    pid: int
    returncode: int
    uptime_s: float


class ServiceRestarted(Kind, tag="service.restarted"):
    service: str
    pid: int
    attempt: int
    backoff_s: float


class UncleanShutdown(Kind, tag="system.unclean_shutdown"):
    """`up` found the bus file of an earlier `up` whose process is gone: it was killed, not stopped."""

    pid: int
    url: str = ""
    since: float = 0.0  # when that file was written


# --- evaluations (trainer daemon) -----------------------------------------------------------


class Caps(msgspec.Struct, frozen=True, kw_only=True):
    time_s: float = 3600.0  # device time of training steps only
    memory_mb: float = 11264.0  # peak allocated (GPU) or RSS (CPU)


class EquivalenceOptions(msgspec.Struct, frozen=True, kw_only=True):
    """How closely a rewrite's eval-mode outputs must match the original's (PROTOCOL.md, Modularizer)."""

    rtol: float = 1e-5
    atol: float = 1e-6
    samples: int = 8  # training inputs both models see


class GdasOptions(msgspec.Struct, frozen=True, kw_only=True):
    """A GDAS search (Dong & Yang 2019; defaults from the authors' code, PROTOCOL.md)."""

    epochs: int  # search epochs; the weights' recipe schedule is stretched or shrunk to them
    tau_max: float = 10.0  # Gumbel-softmax temperature at the first epoch, annealed linearly
    tau_min: float = 0.1  # ... to this at the last
    arch_lr: float = 3e-4  # Adam on the architecture parameters
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3


class EvaluationRequested(Kind, tag="evaluation.requested"):
    eval_id: str
    request: EvalKind
    task: str  # built-in task name or path of a task TOML file
    # Python source defining `class Architecture(nn.Module)`; equivalence: the rewrite;
    # gdas: the seed configuration's assembly (gated, not trained: the search builds the supernet)
    model_source: str
    recipe: dict[str, Any] | str = {}  # training recipe; a string is parsed as JSON by the trainer
    caps: Caps = Caps()  # validate / equivalence: time_s caps the whole job in wall-clock seconds
    seed: int = 42
    arch_id: str = ""  # e.g. arch_007, or a slot configuration's id
    phase: int = 1
    reference_source: str = ""  # equivalence: the original model that model_source must reproduce
    equivalence: EquivalenceOptions | None = None  # equivalence: tolerances (None = the defaults)
    space: SlottedSpace | None = None  # gdas: the space searched (its lr slot is not searched)
    gdas: GdasOptions | None = None  # gdas: required for a gdas request


class EvaluationStarted(Kind, tag="evaluation.started"):
    eval_id: str
    device: str
    worker: str
    attempt: int = 1


class EvaluationProgress(Kind, tag="evaluation.progress"):
    eval_id: str
    epoch: int
    epochs: int
    train_loss: float
    val_metric: float | None = None
    device_time_s: float = 0.0
    choices: list[int] | None = None  # gdas: the current argmax choice per slot


class EvaluationInterrupted(Kind, tag="evaluation.interrupted"):
    """A fault of the machinery stopped an evaluation (its worker killed from outside, a trainer
    restart); it is not the candidate's doing and the evaluation is tried again."""

    eval_id: str
    reason: str
    attempt: int = 1
    retry_in_s: float = 0.0


class EvaluationCompleted(Kind, tag="evaluation.completed"):
    eval_id: str
    status: EvalStatus
    reason: str = ""  # one line; empty for ok
    request: EvalKind = "proxy"
    arch_id: str = ""
    val_metric: float | None = None  # lower is better after the task's orientation
    test_metric: float | None = None  # wave 2 only; never shown to agents
    metric_name: str = ""
    params: int | None = None
    flops: int | None = None
    peak_memory_mb: float | None = None
    device_time_s: float = 0.0
    wall_time_s: float = 0.0
    epochs_done: int = 0
    best_epoch: int | None = None
    weights_path: str = ""
    warnings: list[str] = []
    traceback: str = ""  # truncated
    attempt: int = 1
    phase: int = 1
    first_step_at: float | None = None  # wall-clock time training began (None if it never did)
    choices: list[int] | None = None  # gdas: the final configuration, argmax per slot (0 for frozen slots)
    max_abs_diff: float | None = None  # equivalence: largest |rewrite - original| eval-mode output difference
    # "RUN/EVAL_ID": nothing was trained; this is that recorded evaluation's result, served to a
    # re-execution (`run --llm replay:LOG#RUN`) of an identical request (trainer_daemon/recorded.py)
    reused_from: str = ""


# --- Phase 1: planner, data explorer, code executor ----------------------------------------


class Proposal(msgspec.Struct, frozen=True, kw_only=True):
    arch_id: str  # arch_NNN
    description: str
    reasoning: str = ""
    recipe: dict[str, Any] | str = {}
    source: str = ""  # given by a planner that writes code itself (rule-based); else the Code Executor writes it


class ExplorationRequested(Kind, tag="exploration.requested"):
    question: str


class ExplorationStepped(Kind, tag="exploration.stepped"):
    step: int
    code: str
    output: str  # truncated
    status: str = "ok"  # ok | error | timeout


class ExplorationReported(Kind, tag="exploration.reported"):
    report: str
    steps: int


class ExperimentProposed(Kind, tag="experiment.proposed"):
    batch: int
    proposals: list[Proposal]


class ArchitectureImplemented(Kind, tag="architecture.implemented"):
    arch_id: str
    source: str
    recipe: dict[str, Any] = {}
    attempts: int = 1
    validation_eval_id: str = ""


class ArchitectureRejected(Kind, tag="architecture.rejected"):
    """The Code Executor gave up (validation kept failing); uses budget, not patience."""

    arch_id: str
    reason: str
    attempts: int


class BatchSummarized(Kind, tag="batch.summarized"):
    batch: int
    summary: str


class PhaseStarted(Kind, tag="phase.started"):
    """A stage of the pipeline began: "1", "1.5", "2", "3" or "final" (time and cost are counted per stage)."""

    phase: str


class PhaseStopped(Kind, tag="phase.stopped"):
    phase: int
    reason: str  # planner STOP | budget | patience | cost cap
    arch_ids: list[str] = []  # chosen for full training


class SeedSelected(Kind, tag="seed.selected"):
    arch_id: str
    source: str
    recipe: dict[str, Any]
    val_metric: float
    eval_id: str
    params: int | None = None


# --- Phase 1.5 and 2: Modularizer, Slot Planner, slot alternatives --------------------------


class ModularizerFinished(Kind, tag="modularizer.finished"):
    """The seed as the next phases see it: rewritten stage by stage (accepted), kept as it was
    because it is not a block stack (skipped), or kept after the rewrites failed (failed)."""

    outcome: Literal["accepted", "skipped", "failed"]
    source: str  # the code Phase 2 starts from
    reason: str = ""
    attempts: int = 0
    eval_id: str = ""  # the equivalence check that accepted it


class SlotPlanProposed(Kind, tag="slot_plan.proposed"):
    """A slotted space as planned: every slot's alternative 0 is the seed's own choice; the other
    alternatives may still lack a source (the Code Executor writes them from their description)."""

    plan: int  # 1, or 2 after a rejected space
    space: SlottedSpace
    notes: list[str] = []  # caps applied, defaults added


class AlternativeImplemented(Kind, tag="alternative.implemented"):
    plan: int
    slot: str
    index: int
    source: str
    attempts: int = 1


class AlternativeDropped(Kind, tag="alternative.dropped"):
    """An alternative that never validated (or was trimmed); the space goes on without it."""

    plan: int
    slot: str
    index: int
    reason: str
    attempts: int = 0


class SpaceAccepted(Kind, tag="space.accepted"):
    """The searched space: its seed configuration reproduces the seed."""

    plan: int
    space: SlottedSpace
    notes: list[str] = []
    size: int = 0
    eval_id: str = ""  # the seed-reproduction check


class SpaceRejected(Kind, tag="space.rejected"):
    plan: int
    reason: str


# --- Phase 3: the search over the slotted space -----------------------------------------------


class ProposedConfiguration(msgspec.Struct, frozen=True, kw_only=True):
    index: int  # 0-based order of proposal
    config_id: str  # also the arch id of its evaluations
    key: str  # canonical: the same network is never paid for twice
    choices: tuple[int, ...]
    lr_index: int
    generation: int = 0
    origin: str = ""  # seed | single | double | random | mutation-1 | mutation-2 | uniform-fallback | gdas
    parent: str = ""


class ConfigurationsProposed(Kind, tag="configurations.proposed"):
    """What the search asks to evaluate next; replay needs no random state."""

    algorithm: str  # re | rs | gdas
    proposals: list[ProposedConfiguration]


class AgentOutputRejected(Kind, tag="agent.output_rejected"):
    """An LLM answer that could not be used even after the bounded re-asks."""

    agent: str
    reason: str
    attempts: int


class MessageRejected(Kind, tag="message.rejected"):
    """Bytes on an agentnas subject that are not an envelope; kept for the audit."""

    subject: str
    error: str
    data_prefix: str = ""  # first bytes, for diagnosis


# --- LLM calls (agents) -------------------------------------------------------------------


class LlmRequested(Kind, tag="llm.requested"):
    call_id: str
    agent: str
    provider: str
    model: str
    messages: list[dict[str, Any]]
    parameters: dict[str, Any] = {}
    template: str = ""  # prompt template name
    template_hash: str = ""


class LlmResponded(Kind, tag="llm.responded"):
    call_id: str
    agent: str
    content: str
    stop_reason: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    latency_s: float = 0.0
    cost_usd: float = 0.0
    error: str = ""  # provider error after retries; content is empty then


Payload = Union[
    RunRequested,
    RunStarted,
    RunFinished,
    RunFailed,
    AgentStarted,
    AgentStopped,
    AgentHeartbeat,
    ServiceExited,
    ServiceRestarted,
    UncleanShutdown,
    EvaluationRequested,
    EvaluationStarted,
    EvaluationProgress,
    EvaluationCompleted,
    EvaluationInterrupted,
    LlmRequested,
    LlmResponded,
    MessageRejected,
    ExplorationRequested,
    ExplorationStepped,
    ExplorationReported,
    ExperimentProposed,
    ArchitectureImplemented,
    ArchitectureRejected,
    BatchSummarized,
    PhaseStarted,
    PhaseStopped,
    SeedSelected,
    AgentOutputRejected,
    ModularizerFinished,
    SlotPlanProposed,
    AlternativeImplemented,
    AlternativeDropped,
    SpaceAccepted,
    SpaceRejected,
    ConfigurationsProposed,
]

KINDS: dict[str, type[Kind]] = {
    cls.__struct_config__.tag: cls for cls in Payload.__args__  # type: ignore[attr-defined]
}


def tag_of(payload: Kind | type[Kind]) -> str:
    return payload.__struct_config__.tag  # type: ignore[return-value]


# --- envelope ------------------------------------------------------------------------------


class Sender(msgspec.Struct, frozen=True, kw_only=True):
    agent: str
    instance: str = ""


class UnknownPayload(msgspec.Struct, frozen=True, kw_only=True):
    """Stands in for a kind this version does not know; folds skip it."""

    kind: str
    raw: bytes


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    run_id: str
    kind: str
    time: float
    sender: Sender
    payload: Any  # a Kind, or UnknownPayload after decoding an unknown kind
    causation_id: str | None = None
    schema: int = SCHEMA_VERSION


class _WireEnvelope(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    run_id: str
    kind: str
    time: float
    sender: Sender
    payload: msgspec.Raw
    causation_id: str | None = None
    schema: int = SCHEMA_VERSION


def new_id() -> str:
    return uuid.uuid4().hex


def make_event(
    payload: Kind,
    *,
    run_id: str,
    sender: Sender,
    causation_id: str | None = None,
    id: str | None = None,
) -> Envelope:
    return Envelope(
        id=id or new_id(),
        run_id=run_id,
        kind=tag_of(payload),
        time=time.time(),
        sender=sender,
        payload=payload,
        causation_id=causation_id,
    )


_encoder = msgspec.json.Encoder()
_wire_decoder = msgspec.json.Decoder(_WireEnvelope)
_payload_decoders = {tag: msgspec.json.Decoder(cls) for tag, cls in KINDS.items()}


class UndecodableMessage(ValueError):
    """The bytes are not an agentnas envelope at all (as opposed to an unknown kind)."""


def encode(envelope: Envelope) -> bytes:
    if isinstance(envelope.payload, UnknownPayload):
        payload = msgspec.Raw(envelope.payload.raw)
        envelope = msgspec.structs.replace(envelope, payload=payload)
    return _encoder.encode(envelope)


def encode_payload(payload: Kind) -> bytes:
    return _encoder.encode(payload)


def decode_payload(kind: str, raw: bytes | str) -> Kind | UnknownPayload:
    """Decode one payload by its kind; unknown kinds become UnknownPayload."""
    decoder = _payload_decoders.get(kind)
    if decoder is None:
        return UnknownPayload(kind=kind, raw=raw.encode() if isinstance(raw, str) else bytes(raw))
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise UndecodableMessage(f"payload of kind {kind!r} is invalid: {exc}") from None


def decode(data: bytes) -> Envelope:
    try:
        wire = _wire_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise UndecodableMessage(f"not an agentnas envelope: {exc}") from None
    return Envelope(
        id=wire.id,
        run_id=wire.run_id,
        kind=wire.kind,
        time=wire.time,
        sender=wire.sender,
        payload=decode_payload(wire.kind, bytes(wire.payload)),
        causation_id=wire.causation_id,
        schema=wire.schema,
    )
