"""Phase 3 search algorithms as pure functions: regularized evolution and random search.

The Evolver proposes configurations as events and, on restart, rebuilds its
state from those events. So nothing here keeps state, reads a clock, does I/O
or publishes: every proposal is a function of the space, the settings, the
history of proposals and results so far, and a random draw seeded from the run
seed and the proposal's index (`rng_for`). The same inputs give the same
proposals in any process and Python version (no `hash()`, no set iteration
order reaches a result).

Search dimensions: every mutable slot (two or more alternatives; a frozen slot
keeps its seed choice 0 and is never touched) plus the virtual learning-rate
slot when the space has more than one multiplier. A mutation of n slots
changes n distinct dimensions, each to a value other than the parent's,
uniform over the other values.

Regularized evolution follows Real et al. (AAAI 2019) with aging: the
tournament samples from the current population and a finished child replaces
the oldest member, not the worst. Proposals are asynchronous (as in NNI): a new
child is bred as soon as a trainer slot is free, from the population as it
stands at that moment (`next_proposals`). Random search is `random_proposals`.
PROTOCOL.md, "Phase 3" and "Reference settings where the paper is silent".
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from typing import Literal

import msgspec

from agentnas.bus.settings import EvolutionSettings
from agentnas.bus.space import (
    Configuration,
    SlottedSpace,
    SpaceError,
    canonical_key,
    config_id,
    configuration_from_key,
    mutable_slots,
    seed_configuration,
)

__all__ = [
    "Member",
    "Origin",
    "Proposal",
    "Trial",
    "age",
    "child",
    "current_population",
    "dimensions",
    "initial_population",
    "mutate",
    "next_proposals",
    "patience_used",
    "random_proposals",
    "rng_for",
    "tournament",
    "uniform",
]

LR = -1  # the position of the virtual learning-rate slot among the dimensions
REDRAWS = 100  # bounded redraws of a duplicate before falling back (or giving up)

Origin = Literal["seed", "single", "double", "random", "mutation-1", "mutation-2", "uniform-fallback"]


class Member(msgspec.Struct, frozen=True, kw_only=True):
    """One population member. fitness: lower is better; None = the evaluation failed."""

    key: str
    config: Configuration
    fitness: float | None
    born: int  # its proposal index


class Trial(msgspec.Struct, frozen=True, kw_only=True):
    """A proposal made so far and its outcome, as the Evolver folds it from the log."""

    index: int  # 0-based order of proposal
    key: str
    config: Configuration
    fitness: float | None = None  # None: failed, or not finished yet
    finished: bool = False


class Proposal(msgspec.Struct, frozen=True, kw_only=True):
    index: int  # 0-based order of proposal
    config: Configuration
    key: str  # canonical_key
    config_id: str
    generation: int  # index // population
    origin: Origin
    parent: str = ""  # the parent's key for a mutation, else ""


# ---------------------------------------------------------------- draws and dimensions


def rng_for(run_seed: int, index: int, *, stream: str = "evolution") -> random.Random:
    """The random draw for one proposal: seeded with an integer from SHA-256 of the inputs.

    Integer seeding of the Mersenne Twister is stable across processes and Python
    versions (unlike `hash()`). `stream` keeps the algorithms' draws independent
    (random search uses "random").
    """
    digest = hashlib.sha256(f"agentnas.search/{stream}/{int(run_seed)}/{int(index)}".encode()).digest()
    return random.Random(int.from_bytes(digest, "big"))


def dimensions(space: SlottedSpace) -> tuple[tuple[int, int], ...]:
    """(position, number of values) of each search dimension: the mutable slots, then lr (position LR)."""
    dims = [(i, len(space.slots[i].alternatives)) for i in mutable_slots(space)]
    if len(space.lr_multipliers) > 1:
        dims.append((LR, len(space.lr_multipliers)))
    return tuple(dims)


def _get(config: Configuration, position: int) -> int:
    return config.lr_index if position == LR else config.choices[position]


def _with(config: Configuration, values: dict[int, int]) -> Configuration:
    choices = tuple(values.get(i, k) for i, k in enumerate(config.choices))
    return Configuration(choices=choices, lr_index=values.get(LR, config.lr_index))


def uniform(space: SlottedSpace, rng: random.Random) -> Configuration:
    """Every dimension uniform over its values; frozen slots at 0 (a single lr multiplier: index 0)."""
    base = Configuration(choices=(0,) * len(space.slots), lr_index=0)
    return _with(base, {position: rng.randrange(n) for position, n in dimensions(space)})


def mutate(space: SlottedSpace, parent: Configuration, n: int, rng: random.Random) -> Configuration:
    """The parent with n distinct dimensions changed, each to another value (uniform over the others)."""
    dims = dimensions(space)
    if not 1 <= n <= len(dims):
        raise ValueError(f"cannot mutate {n} dimensions of a space with {len(dims)}")
    changed = {}
    for position, size in rng.sample(dims, n):
        value = rng.randrange(size - 1)
        changed[position] = value + (value >= _get(parent, position))  # skip the parent's value
    return _with(parent, changed)


def _flat(space: SlottedSpace, config: Configuration) -> int | None:
    """The configuration's number in mixed radix over the dimensions; None if a frozen slot is not at 0."""
    searched = {position for position, _ in dimensions(space)}
    if any(k != 0 for i, k in enumerate(config.choices) if i not in searched):
        return None
    if LR not in searched and config.lr_index != 0:
        return None
    number = 0
    for position, size in dimensions(space):
        number = number * size + _get(config, position)
    return number


def _unflat(space: SlottedSpace, number: int) -> Configuration:
    values = {}
    for position, size in reversed(dimensions(space)):
        number, values[position] = divmod(number, size)
    return _with(Configuration(choices=(0,) * len(space.slots), lr_index=0), values)


def _uniform_unseen(space: SlottedSpace, rng: random.Random, seen: set[str]) -> Configuration | None:
    """Uniform over the configurations whose key is not in seen; None when there are none.

    Rejection first (cheap while the space is large); after REDRAWS duplicates, an
    exact draw: the r-th unseen configuration in mixed-radix order. Both are
    uniform over the unseen configurations.
    """
    for _ in range(REDRAWS):
        config = uniform(space, rng)
        if canonical_key(space, config) not in seen:
            return config
    taken = set()
    for key in seen:
        try:
            number = _flat(space, configuration_from_key(space, key))
        except SpaceError:
            continue  # not a configuration of this space
        if number is not None:
            taken.add(number)
    total = math.prod(size for _, size in dimensions(space))
    if len(taken) >= total:
        return None
    number = rng.randrange(total - len(taken))
    for t in sorted(taken):
        if t > number:
            break
        number += 1
    return _unflat(space, number)


# ---------------------------------------------------------------- regularized evolution


def _initial(space: SlottedSpace, settings: EvolutionSettings, run_seed: int) -> list[tuple[Configuration, Origin]]:
    """The initial population with each member's origin (see `initial_population`)."""
    seed = seed_configuration(space)
    plan: list[Origin] = ["single"] * settings.init_single_mutations + ["double"] * settings.init_double_mutations
    plan += ["random"] * max(settings.init_random, settings.population - 1 - len(plan))
    plan = plan[: settings.population - 1]
    members: list[tuple[Configuration, Origin]] = [(seed, "seed")]
    seen = {canonical_key(space, seed)}
    n_dims = len(dimensions(space))
    for position, origin in enumerate(plan, start=1):
        rng = rng_for(run_seed, position)
        config = None
        if origin == "random":
            config = _uniform_unseen(space, rng, seen)
        elif (n := 1 if origin == "single" else 2) <= n_dims:
            for _ in range(REDRAWS):
                drawn = mutate(space, seed, n, rng)
                if canonical_key(space, drawn) not in seen:
                    config = drawn
                    break
        if config is not None:  # a space too small for this member: the population is smaller
            members.append((config, origin))
            seen.add(canonical_key(space, config))
    return members


def initial_population(space: SlottedSpace, settings: EvolutionSettings, run_seed: int) -> list[Configuration]:
    """The seed configuration, then `init_single_mutations` single-slot and `init_double_mutations`
    double-slot mutations of the seed, then `init_random` uniform configurations; all distinct.

    Member i (i >= 1) draws from `rng_for(run_seed, i)`; a duplicate is redrawn
    (bounded). If the counts add up to less than `population - 1` the rest are
    uniform too; if more, the list is cut at `population`. A space too small for
    that many distinct configurations (or a double mutation in a space with one
    dimension) gives fewer members.
    """
    return [config for config, _ in _initial(space, settings, run_seed)]


def _rank(member: Member, position: int) -> tuple[bool, float, int]:
    failed = member.fitness is None or math.isnan(member.fitness)
    return (failed, 0.0 if failed else member.fitness, -position)


def tournament(population: Sequence[Member], k: int, rng: random.Random) -> Member:
    """The fittest of k members sampled without replacement (k capped at the population size).

    Failed members (fitness None or NaN) lose to any success; equal fitness goes
    to the younger member (later in the age-ordered list).
    """
    if not population:
        raise ValueError("tournament over an empty population")
    sampled = rng.sample(range(len(population)), min(k, len(population)))
    return population[min(sampled, key=lambda p: _rank(population[p], p))]


def child(
    space: SlottedSpace,
    population: Sequence[Member],
    settings: EvolutionSettings,
    rng: random.Random,
    seen: set[str],
) -> tuple[Configuration, str, int] | None:
    """(child, parent key, number of dimensions mutated), or None when every configuration is seen.

    Parent by tournament; a single-dimension mutation with probability
    `p_single_mutation`, else a double one (single in a one-dimensional space).
    A child whose key is in seen is drawn again, parent included (bounded); then a
    uniform unseen configuration is returned as (config, "", 0), as it is when the
    population is empty (every result so far failed, or none has arrived yet).
    """
    n_dims = len(dimensions(space))
    if population and n_dims:
        for _ in range(REDRAWS):
            parent = tournament(population, settings.tournament, rng)
            n = min(n_dims, 1 if rng.random() < settings.p_single_mutation else 2)
            config = mutate(space, parent.config, n, rng)
            if canonical_key(space, config) not in seen:
                return config, parent.key, n
    config = _uniform_unseen(space, rng, seen)
    return None if config is None else (config, "", 0)


def age(population: Sequence[Member], member: Member, size: int, failed_policy: str) -> list[Member]:
    """The population after a finished member arrives: appended, then the oldest removed back to size.

    A failed member (fitness None) under "ignore" leaves the population as it
    is; under "worst" it enters with the worst fitness (it never wins a
    tournament against a success) and ages out like any other.

    "ignore" is the default because a failure carries no fitness information,
    and letting it push out a live member would shrink the effective
    population (a run of OOMs could age out every good model). NNI's evolution
    offers both, so both are here (settings.failed).
    """
    if member.fitness is None or math.isnan(member.fitness):
        if failed_policy == "ignore":
            return list(population)
        if failed_policy != "worst":
            raise ValueError(f"failed policy must be 'ignore' or 'worst', got {failed_policy!r}")
        member = msgspec.structs.replace(member, fitness=None)
    grown = [*population, member]
    return grown[max(0, len(grown) - size):]


def _checked(history: Sequence[Trial]) -> None:
    if sorted(t.index for t in history) != list(range(len(history))):
        raise ValueError("history must hold each proposal index 0..n-1 exactly once")


def current_population(history: Sequence[Trial], settings: EvolutionSettings) -> list[Member]:
    """The population now: the finished trials folded through `age` in the order they appear
    (their arrival order); pending trials are not in it yet."""
    members: list[Member] = []
    for t in history:
        if t.finished:
            member = Member(key=t.key, config=t.config, fitness=t.fitness, born=t.index)
            members = age(members, member, settings.population, settings.failed)
    return members


def _proposal(space: SlottedSpace, settings: EvolutionSettings, index: int, config: Configuration,
              origin: Origin, parent: str = "") -> Proposal:
    return Proposal(
        index=index, config=config, key=canonical_key(space, config), config_id=config_id(space, config),
        generation=index // settings.population, origin=origin, parent=parent,
    )


def _room(settings: EvolutionSettings, made: int, free: int) -> int:
    """How many proposals may be made now: at most `generations` waves of `population`, and the budget."""
    return max(0, min(free, min(settings.population * settings.generations, settings.budget) - made))


def next_proposals(
    space: SlottedSpace, settings: EvolutionSettings, run_seed: int, history: Sequence[Trial], free: int
) -> list[Proposal]:
    """Up to `free` new proposals of regularized evolution, numbered from len(history).

    `history` holds every proposal made so far exactly once (indices 0..n-1),
    the finished ones in the order their results arrived; where pending ones
    sit does not matter.

    - The first `population` proposals are the initial population
      (`initial_population`), proposed as soon as slots are free.
    - After that, each child is bred (`child`, drawing from
      `rng_for(run_seed, index)`) from the population as it stands when the
      child is proposed: the members whose results have arrived, folded in
      arrival order through `age` (each arriving result is appended and the
      oldest removed at that moment). A child proposed while results are
      pending simply does not see them. This is the asynchronous variant NNI
      uses; it keeps every free trainer slot busy without waiting for a whole
      generation, and keeps the aging semantics. Children proposed before any
      success has arrived are uniform unseen configurations ("uniform-fallback").
    - No key is proposed twice (pending keys included).
    - Generation g is proposals [g*population, (g+1)*population); at most
      `generations` generations (160 proposals with the defaults) and at most
      `budget` proposals. An empty list means the search has nothing more to
      propose now; patience (`patience_used`) is for the caller to check.

    Asking for 3 proposals at once gives the same proposals as asking 3 times
    for one with the earlier ones pending in the history.
    """
    _checked(history)
    start = len(history)
    initial = _initial(space, settings, run_seed)
    for t in history:
        if t.index < len(initial) and t.key != canonical_key(space, initial[t.index][0]):
            raise ValueError(f"history proposal {t.index} is not this run's initial member (space, settings, seed?)")
    population = current_population(history, settings)
    seen = {t.key for t in history}
    out: list[Proposal] = []
    for index in range(start, start + _room(settings, start, free)):
        if index < len(initial):
            config, origin = initial[index]
            proposal = _proposal(space, settings, index, config, origin)
        else:
            drawn = child(space, population, settings, rng_for(run_seed, index), seen)
            if drawn is None:
                break  # every configuration of the space has been proposed
            config, parent, n = drawn
            proposal = _proposal(space, settings, index, config, f"mutation-{n}" if n else "uniform-fallback", parent)
        seen.add(proposal.key)
        out.append(proposal)
    return out


# ---------------------------------------------------------------- random search


def random_proposals(
    space: SlottedSpace, settings: EvolutionSettings, run_seed: int, history: Sequence[Trial], free: int
) -> list[Proposal]:
    """Up to `free` new proposals of random search, numbered from len(history).

    Waves of `population` i.i.d. uniform configurations (origin "random", each
    from `rng_for(run_seed, index, stream="random")`), except that a key already
    proposed is drawn again, so every proposal is new. The seed configuration is
    not special in random search except that it is always proposal 0 (origin
    "seed"): it is in the comparison with evolution, since the seed is in the
    Phase 3 population (PROTOCOL.md, reporting rule). Results do not matter;
    the same generation cap and budget as `next_proposals` apply, and the list
    stops short when the space is exhausted.
    """
    _checked(history)
    start = len(history)
    seen = {t.key for t in history}
    out: list[Proposal] = []
    for index in range(start, start + _room(settings, start, free)):
        if index == 0:
            config, origin = seed_configuration(space), "seed"
        else:
            config, origin = _uniform_unseen(space, rng_for(run_seed, index, stream="random"), seen), "random"
            if config is None:
                break
        proposal = _proposal(space, settings, index, config, origin)
        seen.add(proposal.key)
        out.append(proposal)
    return out


# ---------------------------------------------------------------- patience


def patience_used(history_in_arrival_order: Sequence[Trial]) -> int:
    """Successful evaluations since the best fitness last improved (strictly), in arrival order.

    Failures (fitness None or NaN) and pending trials neither count nor reset;
    the first success is an improvement. The caller stops when this reaches
    settings.patience.
    """
    best, used = math.inf, 0
    for t in history_in_arrival_order:
        if not t.finished or t.fitness is None or math.isnan(t.fitness):
            continue
        if t.fitness < best:
            best, used = t.fitness, 0
        else:
            used += 1
    return used
