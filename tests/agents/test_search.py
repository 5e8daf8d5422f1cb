import hashlib
import json
import os
import random
import subprocess
import sys

import msgspec
import pytest

from agentnas.agents.search import (
    LR,
    Member,
    Trial,
    age,
    child,
    current_population,
    dimensions,
    initial_population,
    mutate,
    next_proposals,
    patience_used,
    random_proposals,
    rng_for,
    tournament,
    uniform,
)
from agentnas.bus.settings import EvolutionSettings
from agentnas.bus.space import (
    Alternative,
    Slot,
    SlottedSpace,
    canonical_key,
    config_id,
    decode_space,
    encode_space,
    seed_configuration,
)
from tests.conftest import REPO

LRS = (0.25, 0.5, 1.0, 2.0, 4.0)
FROZEN = 2  # the slot of SPACE with one alternative


def make_space(sizes, lr_multipliers=LRS):
    """Slots s0, s1, ... with the given numbers of alternatives (sources are never read here)."""
    slots = tuple(
        Slot(
            name=f"s{i}", class_name=f"SLOT_s{i}", input_shape=(4,), output_shape=(4,),
            alternatives=tuple(
                Alternative(description=f"alternative {k}", source=f"class SLOT_s{i}_{k}(nn.Module):\n    pass\n")
                for k in range(n)
            ),
        )
        for i, n in enumerate(sizes)
    )
    return SlottedSpace(scaffold_source="class Architecture(nn.Module):\n    pass\n", slots=slots,
                        lr_multipliers=lr_multipliers)


SPACE = make_space((3, 4, 1, 5, 3))  # 4 mutable slots, one frozen, 5 lr multipliers: 900 configurations
TINY = make_space((3,), (1.0, 2.0))  # 6 configurations
DEFAULTS = EvolutionSettings()


def value(config, position):
    return config.lr_index if position == LR else config.choices[position]


def differing(space, a, b):
    return sum(value(a, position) != value(b, position) for position, _ in dimensions(space))


def key(config, space=SPACE):
    return canonical_key(space, config)


def score(trial):
    """A deterministic fitness; about one configuration in seven fails."""
    if int(hashlib.sha256(trial.key.encode()).hexdigest()[:4], 16) % 7 == 0:
        return None
    return sum(trial.config.choices) + abs(trial.config.lr_index - 2) * 0.5


def simulate(propose, space=SPACE, settings=DEFAULTS, run_seed=42, slots=3, fitness=score, order_seed=0):
    """Drive a search with `slots` trainers finishing in a random order: (proposals, trials in arrival order)."""
    order = random.Random(order_seed)
    proposals, finished, pending = [], [], []
    while True:
        history = finished + pending
        new = propose(space, settings, run_seed, history, slots - len(pending))
        population_keys = {m.key for m in current_population(history, settings)}
        for p in new:
            assert p.parent == "" or p.parent in population_keys  # bred only from arrived results
        proposals += new
        pending += [Trial(index=p.index, key=p.key, config=p.config) for p in new]
        if not pending:
            return proposals, finished
        t = pending.pop(order.randrange(len(pending)))
        finished.append(msgspec.structs.replace(t, fitness=fitness(t), finished=True))


def member(name, fitness, born=0):
    return Member(key=name, config=seed_configuration(SPACE), fitness=fitness, born=born)


# ---------------------------------------------------------------- draws, dimensions, mutation


def test_rng_for_is_seeded_from_a_digest_not_hash():
    # fixed numbers: the same in every process and Python version (integer seeding of the Mersenne Twister)
    assert rng_for(42, 0).getrandbits(64) == 4847146274860432999
    assert rng_for(42, 7, stream="random").getrandbits(64) == 5660163336317453446
    assert rng_for(42, 1).random() != rng_for(42, 2).random() != rng_for(43, 1).random()
    assert rng_for(42, 1, stream="random").random() != rng_for(42, 1).random()


def test_dimensions_are_the_mutable_slots_and_the_lr_slot():
    assert dimensions(SPACE) == ((0, 3), (1, 4), (3, 5), (4, 3), (LR, 5))
    assert dimensions(make_space((2, 1), (1.0,))) == ((0, 2),)


def test_uniform_covers_every_dimension_and_keeps_frozen_slots():
    configs = [uniform(SPACE, rng_for(1, i)) for i in range(400)]
    assert all(c.choices[FROZEN] == 0 for c in configs)
    for position, size in dimensions(SPACE):
        assert {value(c, position) for c in configs} == set(range(size))
    assert {c.lr_index for c in (uniform(make_space((3,), (1.0,)), rng_for(1, i)) for i in range(20))} == {0}


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_mutation_changes_exactly_n_distinct_dimensions_and_never_a_frozen_slot(n):
    for i in range(200):
        parent = uniform(SPACE, rng_for(3, i))
        rng = rng_for(4, i)
        mutant = mutate(SPACE, parent, n, rng)
        assert differing(SPACE, parent, mutant) == n
        assert mutant.choices[FROZEN] == 0
        canonical_key(SPACE, mutant)  # in range


def test_single_mutations_reach_every_other_value_of_every_dimension():
    seed = seed_configuration(SPACE)
    reached = set()
    for i in range(500):
        mutant = mutate(SPACE, seed, 1, rng_for(5, i))
        reached |= {(p, value(mutant, p)) for p, _ in dimensions(SPACE) if value(mutant, p) != value(seed, p)}
    assert reached == {(p, v) for p, size in dimensions(SPACE) for v in range(size) if v != value(seed, p)}


def test_mutation_of_more_dimensions_than_the_space_has_is_refused():
    with pytest.raises(ValueError, match="cannot mutate 6 dimensions"):
        mutate(SPACE, seed_configuration(SPACE), 6, rng_for(0, 0))
    with pytest.raises(ValueError):
        mutate(SPACE, seed_configuration(SPACE), 0, rng_for(0, 0))


# ---------------------------------------------------------------- initial population


def test_initial_population_composition():
    population = initial_population(SPACE, DEFAULTS, 42)
    seed = seed_configuration(SPACE)
    assert len(population) == 16 and population[0] == seed
    assert [differing(SPACE, seed, c) for c in population[1:11]] == [1] * 5 + [2] * 5
    assert len({key(c) for c in population}) == 16
    assert all(c.choices[FROZEN] == 0 for c in population)
    proposals = next_proposals(SPACE, DEFAULTS, 42, [], 16)
    assert [p.origin for p in proposals] == ["seed"] + ["single"] * 5 + ["double"] * 5 + ["random"] * 5
    assert [p.config for p in proposals] == population
    assert [p.index for p in proposals] == list(range(16)) and {p.generation for p in proposals} == {0}
    assert all(p.parent == "" and p.config_id == config_id(SPACE, p.config) for p in proposals)


def test_initial_population_of_a_space_too_small_is_smaller_and_distinct():
    population = initial_population(TINY, DEFAULTS, 42)
    assert len(population) == 6 and len({key(c, TINY) for c in population}) == 6
    one = make_space((1, 1), (1.0,))  # a single configuration: no dimension at all
    assert initial_population(one, DEFAULTS, 42) == [seed_configuration(one)]


def test_initial_counts_that_do_not_fill_the_population_are_topped_up_with_random_members():
    settings = EvolutionSettings(init_single_mutations=2, init_double_mutations=1, init_random=0)
    origins = [p.origin for p in next_proposals(SPACE, settings, 42, [], 16)]
    assert origins == ["seed", "single", "single", "double"] + ["random"] * 12
    settings = EvolutionSettings(population=4)
    assert [p.origin for p in next_proposals(SPACE, settings, 42, [], 4)] == ["seed", "single", "single", "single"]


# ---------------------------------------------------------------- tournament and aging


def test_tournament_picks_the_best_of_the_sampled_members():
    population = [member(f"m{i}", float(f), born=i) for i, f in enumerate([5, 3, 8, 1, 9, 4, 7, 2, 6, 0])]
    for i in range(50):
        sampled = rng_for(9, i).sample(range(len(population)), 5)
        best = min(sampled, key=lambda p: population[p].fitness)
        assert tournament(population, 5, rng_for(9, i)) == population[best]


def test_tournament_over_the_whole_population_returns_the_global_best():
    population = [member(f"m{i}", float(f), born=i) for i, f in enumerate([5, 3, 8, 1, 9, 4])]
    for i in range(20):
        assert tournament(population, 6, rng_for(1, i)).key == "m3"
        assert tournament(population, 50, rng_for(1, i)).key == "m3"  # k capped at the population size


def test_tournament_failed_members_lose_and_ties_go_to_the_younger():
    population = [member("failed", None, 0), member("old", 2.0, 1), member("young", 2.0, 2),
                  member("nan", float("nan"), 3)]
    assert tournament(population, 4, rng_for(0, 0)).key == "young"
    assert tournament([member("a", None, 0), member("b", None, 1)], 2, rng_for(0, 0)).key == "b"
    with pytest.raises(ValueError):
        tournament([], 5, rng_for(0, 0))


def test_aging_removes_the_oldest_not_the_worst():
    population = [member("best", 0.1, 0), member("worst", 9.0, 1), member("mid", 5.0, 2)]
    aged = age(population, member("new", 7.0, 3), 3, "ignore")
    assert [m.key for m in aged] == ["worst", "mid", "new"]
    assert [m.key for m in population] == ["best", "worst", "mid"]  # not changed in place
    assert [m.key for m in age(population[:2], member("new", 7.0, 3), 3, "ignore")] == ["best", "worst", "new"]


def test_failed_policy_ignore_keeps_failures_out():
    population = [member("a", 1.0, 0), member("b", 2.0, 1)]
    assert age(population, member("x", None, 2), 2, "ignore") == population


def test_failed_policy_worst_lets_a_failure_in_to_age_out():
    population = [member("a", 1.0, 0), member("b", 2.0, 1)]
    aged = age(population, member("x", float("nan"), 2), 2, "worst")
    assert [m.key for m in aged] == ["b", "x"] and aged[1].fitness is None
    assert tournament(aged, 2, rng_for(0, 0)).key == "b"
    aged = age(age(aged, member("c", 3.0, 3), 2, "worst"), member("d", 4.0, 4), 2, "worst")
    assert [m.key for m in aged] == ["c", "d"]
    with pytest.raises(ValueError, match="failed policy"):
        age(population, member("x", None, 2), 2, "drop")


def test_current_population_folds_results_in_arrival_order():
    trials = [Trial(index=i, key=f"k{i}", config=seed_configuration(SPACE), fitness=float(i), finished=True)
              for i in range(4)]
    settings = EvolutionSettings(population=2)
    arrival = [trials[3], trials[0], trials[2], trials[1]]
    assert [m.key for m in current_population(arrival, settings)] == ["k2", "k1"]
    pending = Trial(index=4, key="k4", config=seed_configuration(SPACE))
    assert current_population([*arrival, pending], settings) == current_population(arrival, settings)
    with_failure = [msgspec.structs.replace(trials[0], fitness=None), trials[1]]
    assert [m.key for m in current_population(with_failure, settings)] == ["k1"]


# ---------------------------------------------------------------- children


def test_child_is_a_mutation_of_a_tournament_winner():
    population = [Member(key=key(c), config=c, fitness=float(i), born=i)
                  for i, c in enumerate(initial_population(SPACE, DEFAULTS, 42))]
    counts = {1: 0, 2: 0}
    for i in range(200):
        config, parent, n = child(SPACE, population, DEFAULTS, rng_for(7, i), {m.key for m in population})
        parent_config = next(m.config for m in population if m.key == parent)
        assert differing(SPACE, parent_config, config) == n
        assert key(config) not in {m.key for m in population}
        counts[n] += 1
    assert 60 < counts[1] < 140 and 60 < counts[2] < 140  # p_single_mutation = 0.5
    always_single = EvolutionSettings(p_single_mutation=1.0)
    assert {child(SPACE, population, always_single, rng_for(8, i), set())[2] for i in range(30)} == {1}


def test_child_falls_back_to_an_unseen_uniform_configuration_then_to_none():
    seen = {key(uniform(TINY, rng_for(0, i)), TINY) for i in range(100)} - {key(seed_configuration(TINY), TINY)}
    assert len(seen) == 5
    seed = seed_configuration(TINY)
    population = [Member(key=key(seed, TINY), config=seed, fitness=1.0, born=0)]
    seen_with_seed = seen | {population[0].key}
    assert child(TINY, population, DEFAULTS, rng_for(0, 0), seen_with_seed) is None
    config, parent, n = child(TINY, [], DEFAULTS, rng_for(0, 0), seen)  # no population: uniform over the unseen
    assert (key(config, TINY), parent, n) == (population[0].key, "", 0)


# ---------------------------------------------------------------- proposals


def test_regularized_evolution_makes_exactly_160_proposals_with_the_defaults():
    proposals, finished = simulate(next_proposals, slots=16)
    assert [p.index for p in proposals] == list(range(160))
    assert [p.generation for p in proposals] == [i // 16 for i in range(160)]
    assert len({p.key for p in proposals}) == 160
    assert {p.origin for p in proposals[16:]} <= {"mutation-1", "mutation-2", "uniform-fallback"}
    assert all(p.parent for p in proposals[16:] if p.origin.startswith("mutation"))
    history = sorted(finished, key=lambda t: t.index)
    assert next_proposals(SPACE, DEFAULTS, 42, history, 16) == []


def test_proposals_stop_at_the_budget_and_the_generation_cap():
    assert len(simulate(next_proposals, settings=EvolutionSettings(budget=50))[0]) == 50
    assert len(simulate(next_proposals, settings=EvolutionSettings(generations=3))[0]) == 48
    assert len(simulate(random_proposals, settings=EvolutionSettings(budget=20))[0]) == 20


@pytest.mark.parametrize("propose", [next_proposals, random_proposals])
def test_a_tiny_space_is_exhausted_without_repeats(propose):
    proposals, finished = simulate(propose, space=TINY, slots=2)
    assert len(proposals) == 6 and len({p.key for p in proposals}) == 6
    assert propose(TINY, DEFAULTS, 42, finished, 4) == []


def test_children_proposed_while_results_are_pending_do_not_depend_on_them():
    initial = next_proposals(SPACE, DEFAULTS, 42, [], 16)
    trials = [Trial(index=p.index, key=p.key, config=p.config) for p in initial]
    order = [5, 0, 9, 3, 14, 1, 7, 12, 2, 10]  # ten results have arrived, six are pending
    finished = [msgspec.structs.replace(trials[i], fitness=float(i % 4), finished=True) for i in order]
    pending = [t for t in trials if t.index not in order]
    history = finished + pending

    children = next_proposals(SPACE, DEFAULTS, 42, history, 3)
    assert [c.index for c in children] == [16, 17, 18]
    assert children == next_proposals(SPACE, DEFAULTS, 42, history, 3)  # reproducible
    assert all(c.parent in {t.key for t in finished} for c in children if c.parent)
    # what a pending trial will score is not known, and is not used
    scored = [msgspec.structs.replace(t, fitness=-100.0) for t in pending]
    assert next_proposals(SPACE, DEFAULTS, 42, finished + scored[::-1], 3) == children
    # one at a time, earlier ones pending, gives the same children
    one_by_one, so_far = [], list(history)
    for _ in range(3):
        (p,) = next_proposals(SPACE, DEFAULTS, 42, so_far, 1)
        one_by_one.append(p)
        so_far.append(Trial(index=p.index, key=p.key, config=p.config))
    assert one_by_one == children
    # once a pending result arrives, later children see it
    arrived = finished + [msgspec.structs.replace(pending[0], fitness=-1.0, finished=True)] + pending[1:]
    assert next_proposals(SPACE, DEFAULTS, 42, arrived, 3) != children


def test_history_must_hold_every_index_once_and_match_the_initial_population():
    initial = next_proposals(SPACE, DEFAULTS, 42, [], 3)
    trials = [Trial(index=p.index, key=p.key, config=p.config) for p in initial]
    with pytest.raises(ValueError, match="exactly once"):
        next_proposals(SPACE, DEFAULTS, 42, trials[1:], 1)
    with pytest.raises(ValueError, match="initial member"):
        next_proposals(SPACE, DEFAULTS, 43, trials, 1)


def test_random_search_composition():
    proposals, _ = simulate(random_proposals, slots=5)
    assert len(proposals) == 160 and len({p.key for p in proposals}) == 160
    assert proposals[0].origin == "seed" and proposals[0].config == seed_configuration(SPACE)
    assert {p.origin for p in proposals[1:]} == {"random"}
    assert all(p.parent == "" and p.generation == p.index // 16 for p in proposals)
    assert all(p.config.choices[FROZEN] == 0 for p in proposals)
    # results do not matter to random search
    assert simulate(random_proposals, slots=5, fitness=lambda t: 1.0)[0] == proposals


# ---------------------------------------------------------------- determinism


def test_separately_constructed_inputs_give_the_same_proposals():
    again = decode_space(encode_space(make_space((3, 4, 1, 5, 3))))
    settings = msgspec.json.decode(msgspec.json.encode(DEFAULTS), type=EvolutionSettings)
    for propose in (next_proposals, random_proposals):
        assert simulate(propose, space=again, settings=settings)[0] == simulate(propose)[0]
    assert simulate(next_proposals, run_seed=43)[0] != simulate(next_proposals)[0]
    assert simulate(next_proposals, order_seed=1)[0] != simulate(next_proposals)[0]  # arrival order matters


SCRIPT = """
import json, sys
sys.path.insert(0, {repo!r})
from tests.agents.test_search import SPACE, simulate
from agentnas.agents.search import next_proposals, random_proposals
print(json.dumps([[p.key for p in simulate(f)[0]] for f in (next_proposals, random_proposals)]))
"""


def test_the_same_proposals_in_another_process_with_another_hash_seed():
    here = [[p.key for p in simulate(f)[0]] for f in (next_proposals, random_proposals)]
    for hash_seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", SCRIPT.format(repo=str(REPO))], env=env, cwd=REPO,
                             capture_output=True, text=True, check=True, timeout=120)
        assert json.loads(out.stdout) == here


# ---------------------------------------------------------------- patience


def test_patience_counts_only_successes_since_the_last_improvement():
    def arrived(*fitnesses):
        return [Trial(index=i, key=f"k{i}", config=seed_configuration(SPACE), fitness=f, finished=True)
                for i, f in enumerate(fitnesses)]

    assert patience_used([]) == 0
    assert patience_used(arrived(5.0)) == 0
    assert patience_used(arrived(5.0, 6.0, None, 7.0, None)) == 2
    assert patience_used(arrived(5.0, 6.0, 4.0, 4.0, None, float("nan"))) == 1  # equal is no improvement
    assert patience_used(arrived(None, None)) == 0
    pending = Trial(index=9, key="k9", config=seed_configuration(SPACE))
    assert patience_used([*arrived(5.0, 6.0), pending]) == 1
