import ast
import types

import pytest
import torch

from agentnas.agents.protocol import Experiment, Stop
from agentnas.agents.rule_planner import (
    DEPTHS,
    RECIPES,
    WIDTHS,
    Design,
    RulePlanner,
    TaskInfo,
    design_source,
    families_for,
)
from agentnas.trainer_daemon.gate import check_source
from agentnas.trainer_daemon.recipe import normalise_recipe

SHAPES = [
    TaskInfo(input_shape=(3, 8, 8), output_shape=(28,), loss="cross_entropy"),
    TaskInfo(input_shape=(1, 64), output_shape=(10,), loss="cross_entropy"),
    TaskInfo(input_shape=(1, 8, 8), output_shape=(1, 8, 8), loss="relative_l2"),
]


def build(source: str) -> torch.nn.Module:
    module = types.ModuleType("candidate")
    exec(compile(source, "candidate.py", "exec"), module.__dict__)  # test only; the trainer sandboxes this
    return module.Architecture()


def designs_for(task: TaskInfo):
    for family in families_for(task.input_shape):
        for width in (WIDTHS[0], WIDTHS[-1]):
            for depth in (DEPTHS[0], DEPTHS[-1]):
                yield Design(family=family, width=width, depth=depth, recipe=0)


@pytest.mark.parametrize("task", SHAPES, ids=lambda t: f"{t.input_shape}->{t.output_shape}")
def test_every_family_passes_the_gate_and_gives_the_output_shape(task):
    families = set()
    for design in designs_for(task):
        source = design_source(task, design)
        assert check_source(source) == [], (design, check_source(source))
        ast.parse(source)
        model = build(source)
        for training in (True, False):
            model.train(training)
            out = model(torch.randn(2, *task.input_shape))
            assert out.shape == (2, *task.output_shape), design
        families.add(design.family)
    assert families == {"mlp", "cnn", "resnet"}


def test_families_follow_the_input_rank():
    assert families_for((3, 8, 8)) == ("cnn", "resnet", "mlp")
    assert families_for((1, 64)) == ("cnn", "resnet", "mlp")
    assert families_for((20,)) == ("mlp",)
    assert families_for((2, 4, 8, 8)) == ("mlp",)
    assert families_for((3, 224, 224)) == ("cnn", "resnet")  # a flat MLP there is all weights
    with pytest.raises(ValueError, match="does not fit"):
        design_source(TaskInfo(input_shape=(20,), output_shape=(2,), loss="cross_entropy"),
                      Design(family="cnn", width=16, depth=2, recipe=0))


def test_recipes_are_on_the_whitelist():
    for recipe in RECIPES:
        _, warnings = normalise_recipe({**recipe, "epochs": 30, "batch_size": 128})
        assert warnings == []


def test_first_batch_is_deterministic_complete_and_diverse():
    task = SHAPES[0]
    first = RulePlanner(task, n_parallel=4, budget=20, seed=7).decide([])
    again = RulePlanner(task, n_parallel=4, budget=20, seed=7).decide([])
    other = RulePlanner(task, n_parallel=4, budget=20, seed=8).decide([])
    assert isinstance(first, Experiment)
    assert first == again
    assert first != other
    assert [p.arch_id for p in first.proposals] == ["arch_001", "arch_002", "arch_003", "arch_004"]
    assert {p.description.split(" ")[0].rstrip(",") for p in first.proposals} >= {"plain", "ResNet-style", "MLP"}
    for p in first.proposals:
        assert p.source and check_source(p.source) == []
        assert p.recipe["label_smoothing"] == 0.1 and p.reasoning
    regression = RulePlanner(SHAPES[2], n_parallel=2, budget=20, seed=7).decide([])
    assert all("label_smoothing" not in p.recipe for p in regression.proposals)


def run(planner: RulePlanner, metric_of, rounds: int = 100):
    """Drive the planner like the pipeline would; returns (results, final decision)."""
    results = []
    for _ in range(rounds):
        decision = planner.decide(results)
        if isinstance(decision, Stop):
            return results, decision
        for p in decision.proposals:
            results.append(metric_of(p))
    raise AssertionError("planner never stopped")


def test_stop_on_budget_names_the_best_by_metric():
    planner = RulePlanner(SHAPES[0], n_parallel=3, budget=10, seed=1)
    metric = {}

    def metric_of(p):
        number = int(p.arch_id[5:])
        metric[p.arch_id] = (number * 7) % 11  # arbitrary but distinct
        return (p.arch_id, float(metric[p.arch_id]), "ok")

    results, stop = run(planner, metric_of)
    assert len(results) == 10  # the last batch is cut to the budget
    assert stop.arch_ids == sorted(metric, key=metric.get)[:8]
    assert "budget of 10" in stop.summary


def test_failures_are_not_named_and_later_batches_refine_the_best():
    planner = RulePlanner(SHAPES[1], n_parallel=4, budget=12, seed=3)

    def metric_of(p):
        if p.arch_id == "arch_002":
            return (p.arch_id, None, "oom")
        return (p.arch_id, 10.0 - int(p.arch_id[5:]) * 0.1, "ok")

    results, stop = run(planner, metric_of)
    assert "arch_002" not in stop.arch_ids
    assert stop.arch_ids[0] == "arch_012"
    second = planner.decide(results[:4])
    assert sum("variation of the best so far, arch_004" in p.reasoning for p in second.proposals) == 2


def test_stalls_stop_after_batches_without_improvement():
    planner = RulePlanner(SHAPES[0], n_parallel=2, budget=100, seed=5, stall_batches=3)

    def metric_of(p):
        return (p.arch_id, 1.0 if p.arch_id == "arch_001" else 5.0, "ok")

    results, stop = run(planner, metric_of)
    assert len(results) == 8  # one improving batch, then three that did not improve
    assert stop.arch_ids[0] == "arch_001"
    assert "3 batches without improvement" in stop.summary


def test_all_failure_batches_do_not_count_as_stalls():
    planner = RulePlanner(SHAPES[0], n_parallel=2, budget=20, seed=5, stall_batches=2)

    def metric_of(p):
        number = int(p.arch_id[5:])
        return (p.arch_id, None, "error") if number > 2 else (p.arch_id, float(number), "ok")

    results, stop = run(planner, metric_of)
    # failures neither advance nor reset patience, so only the budget ends this run
    assert len(results) == 20 and "budget of 20" in stop.summary
    assert stop.arch_ids == ["arch_001", "arch_002"]


def test_exhausted_grid_stops():
    task = TaskInfo(input_shape=(20,), output_shape=(3,), loss="cross_entropy")  # MLP only: 27 designs
    planner = RulePlanner(task, n_parallel=5, budget=100, seed=2)
    results, stop = run(planner, lambda p: (p.arch_id, 100.0 - int(p.arch_id[5:]), "ok"))
    assert len(results) == len(WIDTHS) * len(DEPTHS) * len(RECIPES)
    assert "every design of the built-in grid has been tried" in stop.summary
    assert stop.arch_ids[0] == "arch_027" and len(stop.arch_ids) == 8


def test_decisions_are_a_pure_function_of_the_results():
    task = SHAPES[0]

    def metric_of(p):
        return (p.arch_id, (int(p.arch_id[5:]) * 13) % 17 / 10, "ok")

    a = RulePlanner(task, n_parallel=3, budget=30, seed=11)
    results, _ = run(a, metric_of)
    # a fresh planner (a restarted process) decides the same from the same log, in any order
    b = RulePlanner(task, n_parallel=3, budget=30, seed=11)
    for cut in (3, 9, 15):
        assert a.decide(results[:cut]) == b.decide(list(reversed(results[:cut])))
    ids = [r[0] for r in results]
    assert len(ids) == len(set(ids))


def test_no_success_at_all_stops_with_no_names():
    planner = RulePlanner(SHAPES[1], n_parallel=4, budget=4, seed=0)
    results, stop = run(planner, lambda p: (p.arch_id, None, "rejected"))
    assert stop.arch_ids == [] and "no architecture trained successfully" in stop.summary


def test_bad_arguments():
    with pytest.raises(ValueError):
        RulePlanner(SHAPES[0], n_parallel=0, budget=10)
