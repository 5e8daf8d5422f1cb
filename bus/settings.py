"""Typed run settings: the knobs every phase needs, fixed once per run in `run.requested`.

The configuration file (`config.py`) is decoded into Structs that forbid unknown keys; the
sections every phase reads are defined here, without that rule, and the config's sections
subclass them. So one field list serves both: the file is strict, while a log written by
a newer version (with fields this one does not know) still decodes, as events must.

`RunSettings.from_config` builds a run's settings once; roles receive `RunSettings`, never
the whole `Config`. `RunSettings.from_legacy` reads the untyped dict that `run.requested`
carried before this Struct existed, so old logs replay to the same state.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]
Fraction = Annotated[float, msgspec.Meta(gt=0, le=1)]
Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]

Algorithm = Literal["re", "rs", "gdas"]  # regularized evolution, random search, GDAS
ALGORITHM_NAMES = {"re": "regularized evolution", "rs": "random search", "gdas": "GDAS"}


class _Settings(msgspec.Struct, frozen=True, kw_only=True):
    pass


class Phase1Settings(_Settings):
    budget: PositiveInt = 160  # evaluations, failures included
    patience: PositiveInt = 64  # consecutive successful evaluations without improvement
    n_parallel: NonNegativeInt = 0  # proposals per batch; 0 = the trainer slots the run starts
    top_k_full: PositiveInt = 8  # wave-1 full training after STOP
    explorer_max_steps: PositiveInt = 10
    explorer_output_chars: PositiveInt = 5000
    code_retries: NonNegativeInt = 10
    rule_epochs: NonNegativeInt = 0  # epochs of the recipes the rule-based planner writes; 0 = its default, 30


class ProxySettings(_Settings):
    fraction: Fraction = 0.3  # of full epochs, floored at 1
    time_cap_s: PositiveFloat = 3600.0  # device seconds of training steps per proxy run
    memory_cap_mb: PositiveFloat = 11264.0
    full_time_cap_s: PositiveFloat = 86400.0  # each wave of full training
    validate_time_cap_s: PositiveFloat = 60.0  # wall seconds a `validate` request may take in all
    # Wave 2 (train+valid, tested once): "finalists" = every architecture that completed wave 1,
    # as PROTOCOL.md's full training; "reported" = only the winner and the seed, the two numbers
    # the reporting rule hands over (saves up to 2 * top_k_full - 2 full trainings).
    wave2: Literal["finalists", "reported"] = "finalists"


class ModularizerSettings(_Settings):
    retries: NonNegativeInt = 5
    rtol: NonNegativeFloat = 1e-5
    atol: NonNegativeFloat = 1e-6


class SlotsSettings(_Settings):
    max_slots: PositiveInt = 20
    max_alternatives: Annotated[int, msgspec.Meta(ge=2)] = 8
    min_alternatives: PositiveInt = 4
    code_retries: NonNegativeInt = 10
    explorer_report_chars: PositiveInt = 3000
    summaries_chars: PositiveInt = 3000
    lr_multipliers: tuple[PositiveFloat, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    phase_retries: NonNegativeInt = 1  # a space that fails the seed-reproduction gate: tries of the phase


class EvolutionSettings(_Settings):
    algorithm: Algorithm = "re"
    population: Annotated[int, msgspec.Meta(ge=2)] = 16
    init_single_mutations: NonNegativeInt = 5
    init_double_mutations: NonNegativeInt = 5
    init_random: NonNegativeInt = 5
    tournament: PositiveInt = 5
    p_single_mutation: Probability = 0.5
    generations: PositiveInt = 10  # the initial population and 9 waves of offspring
    budget: PositiveInt = 160
    patience: PositiveInt = 64
    top_k_full: PositiveInt = 8
    # A failed child (rejected, oom, timeout, error): "ignore" keeps it out of the population;
    # "worst" lets it in with the worst fitness, so it only ages out. Default: ignore (see docs).
    failed: Literal["ignore", "worst"] = "ignore"
    # GDAS (Dong & Yang 2019, reference settings): temperature 10 -> 0.1, Adam for the
    # architecture parameters on a held-out half of the training split
    gdas_epochs: PositiveInt = 20
    gdas_tau_max: PositiveFloat = 10.0
    gdas_tau_min: PositiveFloat = 0.1
    gdas_arch_lr: PositiveFloat = 3e-4
    gdas_arch_betas: tuple[float, float] = (0.5, 0.999)
    gdas_arch_weight_decay: NonNegativeFloat = 1e-3


class LlmCaps(_Settings):
    token_cap: NonNegativeInt = 0  # 0 = no cap; counts the whole run's tokens
    cost_cap_usd: NonNegativeFloat = 0.0


class TaskInfo(_Settings):
    """What every role may know of the task (blind runs show only the minimal spec in prompts)."""

    name: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    loss: str
    metric: str  # every metric is an error: lower is better
    description: str = ""
    blind: bool = False
    published_best: float | None = None


class RunSettings(_Settings):
    """Everything a run's agents need, fixed when the run is requested."""

    task: TaskInfo
    task_ref: str  # built-in task name or the absolute path of a task TOML file
    phases: tuple[int, ...] = (1, 2, 3)
    seed: int = 42
    phase1: Phase1Settings = Phase1Settings()
    proxy: ProxySettings = ProxySettings()
    modularizer: ModularizerSettings = ModularizerSettings()
    slots: SlotsSettings = SlotsSettings()
    evolution: EvolutionSettings = EvolutionSettings()
    llm_caps: LlmCaps = LlmCaps()
    llm_spec: str = ""  # the provider chosen for this run (--llm), "" = the agents' configured one
    on_divergence: Literal["stop", "live"] = "stop"
    data_dir: str = ""  # train/valid splits as npy for the Data Explorer
    data_paths: str = ""  # how prompts name those files (never an absolute path)
    # role -> module:Class serving it in this run (e.g. the rule-based roles of `--llm none`); a role's
    # process uses it for this run instead of its own default, so a resumed run keeps its roles
    roles: dict[str, str] = {}

    def runs_phase(self, phase: int) -> bool:
        return phase in self.phases

    @classmethod
    def from_config(cls, config: Any, *, task: TaskInfo, task_ref: str, **fields: Any) -> RunSettings:
        """The run's settings from the effective `Config` (its sections subclass the ones here)."""
        sections = {name: msgspec.convert(msgspec.to_builtins(getattr(config, name)), kind)
                    for name, kind in _SECTIONS.items()}
        caps = LlmCaps(token_cap=config.llm.token_cap, cost_cap_usd=config.llm.cost_cap_usd)
        return cls(task=task, task_ref=task_ref, seed=config.seed, llm_caps=caps, **sections, **fields)

    @classmethod
    def from_legacy(cls, task_ref: str, phases: tuple[int, ...], config: dict[str, Any]) -> RunSettings:
        """Settings of a run recorded before this Struct existed (`run.requested.config`)."""
        spec = dict(config.get("task_spec") or {})
        task = TaskInfo(name=str(spec.get("name") or task_ref), input_shape=tuple(spec.get("input_shape") or ()),
                        output_shape=tuple(spec.get("output_shape") or ()), loss=str(spec.get("loss", "")),
                        metric=str(spec.get("metric", "")), description=str(spec.get("description", "")),
                        blind=bool(spec.get("blind", False)), published_best=spec.get("published_best"))
        sections = {}
        for name, kind in _SECTIONS.items():
            raw = dict(config.get(name) or {})
            if name == "evolution":  # the first version named algorithms differently
                raw["algorithm"] = {"evolution": "re", "random": "rs"}.get(raw.get("algorithm"), raw.get("algorithm", "re"))
            sections[name] = msgspec.convert(raw, kind, strict=False)
        llm = config.get("llm") or {}
        caps = LlmCaps(token_cap=int(llm.get("token_cap", 0)), cost_cap_usd=float(llm.get("cost_cap_usd", 0.0)))
        divergence = config.get("on_divergence", "stop")
        return cls(task=task, task_ref=str(config.get("task_ref") or task_ref), phases=tuple(phases),
                   seed=int(config.get("seed", 42)), llm_caps=caps, llm_spec=str(config.get("llm_spec") or ""),
                   on_divergence=divergence if divergence in ("stop", "live") else "stop",
                   data_dir=str(config.get("data_dir") or ""), data_paths=str(config.get("data_paths") or ""),
                   **sections)


_SECTIONS: dict[str, type[_Settings]] = {
    "phase1": Phase1Settings,
    "proxy": ProxySettings,
    "modularizer": ModularizerSettings,
    "slots": SlotsSettings,
    "evolution": EvolutionSettings,
}
