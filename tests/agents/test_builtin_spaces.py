"""Built-in slotted spaces: static checks, the seed reproduced, every alternative built and run.

Model code here is our own (trusted), so it is exec'd in-process; the trainer
sandboxes everything else.
"""

import types

import msgspec
import pytest
import torch

from agentnas.agents.builtin_spaces import BUILTIN_SPACES, SEED_RECIPE, design_of, resnet18, rule_space, wrn16_4
from agentnas.agents.rule_planner import Design, TaskInfo, design_recipe, design_source, families_for
from agentnas.bus.space import assemble, check_space, config_recipe, seed_configuration
from agentnas.trainer_daemon.gate import check_source
from agentnas.trainer_daemon.recipe import normalise_recipe
from agentnas.trainer_daemon.tasks import list_tasks

TASKS = {spec.name: spec for spec in list_tasks()}
SMALL = 0.25  # width scale for the every-alternative checks (the defaults are the real widths)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small models on a shared machine: torch's thread pool only adds contention (10x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(source: str) -> torch.nn.Module:
    module = types.ModuleType("candidate")
    exec(compile(source, "candidate.py", "exec"), module.__dict__)  # test only; the trainer sandboxes this
    return module.Architecture()


def tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


def assert_reproduces(space, input_shape, output_shape):
    """The seed configuration is the seed: same parameters in the same construction order, and
    the same outputs after the seed's weights are transplanted (parameters + buffers by order)."""
    checked, notes = check_space(space)
    assert checked == space and notes == []
    seed = assemble(space, seed_configuration(space))
    assert check_source(seed) == [] and check_source(space.seed_source) == []
    torch.manual_seed(0)
    original = build(space.seed_source)
    torch.manual_seed(0)
    slotted = build(seed)
    ours, theirs = tensors(original), tensors(slotted)
    assert [t.shape for t in ours] == [t.shape for t in theirs]
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))  # same init: same construction order
    assert sum(p.numel() for p in original.parameters()) == space.seed_params
    torch.manual_seed(1)
    original = build(space.seed_source)  # fresh weights, then moved over by registration order
    with torch.no_grad():
        x = torch.randn(3, *input_shape)
        original.train()
        original(x)  # move the BN running statistics off their defaults
        for a, b in zip(tensors(original), tensors(slotted)):
            b.copy_(a)
        original.eval(), slotted.eval()
        expected, got = original(x), slotted(x)
    assert got.shape == expected.shape == (3, *output_shape)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def assert_every_alternative_runs(space, input_shape, output_shape):
    seed = seed_configuration(space)
    x = torch.randn(2, *input_shape)
    for i, slot in enumerate(space.slots):
        for k in range(1, len(slot.alternatives)):
            choices = list(seed.choices)
            choices[i] = k
            config = msgspec.structs.replace(seed, choices=tuple(choices))
            source = assemble(space, config)
            where = f"{slot.name}={k} ({slot.alternatives[k].description})"
            assert check_source(source) == [], where
            model = build(source)
            for training in (True, False):
                model.train(training)
                with torch.no_grad():
                    assert model(x).shape == (2, *output_shape), where


def assert_shape_of_space(space, name):
    assert 8 <= len(space.slots) <= 12
    assert space.provenance.created_by == f"builtin:{name}"
    assert space.lr_multipliers == (0.25, 0.5, 1.0, 2.0, 4.0)
    for slot in space.slots:
        assert 4 <= len(slot.alternatives) <= 8, slot.name
        assert slot.alternatives[0].role == ("identity" if slot.kind == "glue" else "seed"), slot.name
        roles = [a.role for a in slot.alternatives]
        if slot.input_shape == slot.output_shape:
            assert "identity" in roles, slot.name
    assert [s.kind for s in space.slots].count("glue") >= 4


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", BUILTIN_SPACES)
def test_builtin_space_reproduces_its_seed_at_full_width(name, task):
    spec = TASKS[task]
    space = BUILTIN_SPACES[name](spec)
    assert space.task == task
    assert_shape_of_space(space, name)
    assert_reproduces(space, spec.input_shape, spec.output_shape)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", BUILTIN_SPACES)
def test_every_alternative_of_a_builtin_space_runs_in_the_seed(name, task):
    spec = TASKS[task]
    space = BUILTIN_SPACES[name](spec, width_scale=SMALL)
    assert_shape_of_space(space, name)
    assert_reproduces(space, spec.input_shape, spec.output_shape)
    assert_every_alternative_runs(space, spec.input_shape, spec.output_shape)


def test_defaults_are_the_real_networks():
    cifar10 = TaskInfo(input_shape=(3, 32, 32), output_shape=(10,), loss="cross_entropy")
    imagenet = TaskInfo(input_shape=(3, 224, 224), output_shape=(1000,), loss="cross_entropy")
    assert wrn16_4(cifar10).seed_params == 2_748_890  # WRN-16-4's 2.75 M (2.77 M with 100 classes)
    assert resnet18(cifar10).seed_params == 11_173_962  # the usual small-image ResNet-18
    space = resnet18(imagenet)
    assert space.seed_params == 11_689_512  # torchvision's resnet18()
    assert sum(p.numel() for p in build(space.seed_source).parameters()) == space.seed_params
    assert space.slots[0].output_shape == (64, 56, 56)  # torchvision's stem: 7x7 stride 2 and a max pool
    assert [s.output_shape for s in space.slots if s.name.startswith("layer") and s.kind == "module"] == [
        (64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)]
    assert [s.output_shape[0] for s in wrn16_4(cifar10).slots if s.name.startswith("group") and s.kind == "module"] == [
        64, 128, 256]


def test_seed_recipe_is_the_wrn_recipe_on_the_whitelist():
    space = wrn16_4(TASKS["addigits"])
    assert space.seed_recipe == SEED_RECIPE
    recipe, warnings = normalise_recipe(space.seed_recipe)
    assert warnings == [] and recipe.optimizer == "sgd" and recipe.lr == 0.1 and recipe.epochs == 30
    assert config_recipe(space, seed_configuration(space))["lr"] == 0.1


@pytest.mark.parametrize("task", [
    TaskInfo(input_shape=(4, 64), output_shape=(36,), loss="bce_with_logits"),  # multi-label sequences
    TaskInfo(input_shape=(3, 8, 8), output_shape=(2, 4, 4), loss="mse"),  # dense, another size: pooled head
    TaskInfo(input_shape=(2, 5, 3), output_shape=(3, 5, 3), loss="mse"),  # dense, odd sides, more channels
    TaskInfo(input_shape=(1, 1), output_shape=(3,), loss="cross_entropy"),  # a single position
], ids=["multilabel-1d", "pooled-dense", "dense-odd", "one-position"])
@pytest.mark.parametrize("name", BUILTIN_SPACES)
def test_builtin_spaces_fit_other_task_shapes(name, task):
    space = BUILTIN_SPACES[name](task, width_scale=SMALL)
    assert_reproduces(space, task.input_shape, task.output_shape)


@pytest.mark.parametrize("shape", [(20,), (2, 3, 8, 8)])
@pytest.mark.parametrize("name", BUILTIN_SPACES)
def test_other_input_ranks_are_refused_clearly(name, shape):
    with pytest.raises(ValueError, match=r"needs \(C, L\) sequences or \(C, H, W\) images"):
        BUILTIN_SPACES[name](TaskInfo(input_shape=shape, output_shape=(2,), loss="cross_entropy"))


# ---------------------------------------------------------------- the rule planner's seeds

DESIGNS = [(16, 2, 0), (64, 4, 2), (32, 3, 1)]  # (width, depth, recipe); the first gets every alternative run


@pytest.mark.parametrize("task", TASKS)
def test_rule_space_reproduces_design_source(task):
    spec = TASKS[task]
    families = families_for(spec.input_shape)
    assert set(families) == {"mlp", "cnn", "resnet"}
    for family in families:
        for n, (width, depth, recipe) in enumerate(DESIGNS):
            design = Design(family=family, width=width, depth=depth, recipe=recipe)
            space = rule_space(design, spec)
            assert space.seed_source == design_source(spec, design)
            assert space.seed_recipe == design_recipe(spec, design)
            assert space.provenance.created_by == "builtin:rule_planner"
            assert len(space.slots) == 2 * depth + 1 + (2 if family == "resnet" else 0)
            for slot in space.slots:
                assert 4 <= len(slot.alternatives) <= 8, (design, slot.name)
                assert slot.alternatives[0].role == ("identity" if slot.kind == "glue" else "seed")
            assert_reproduces(space, spec.input_shape, spec.output_shape)
            if n == 0:
                assert_every_alternative_runs(space, spec.input_shape, spec.output_shape)


def test_rule_space_refuses_a_design_that_does_not_fit():
    flat = TaskInfo(input_shape=(20,), output_shape=(2,), loss="cross_entropy")
    with pytest.raises(ValueError, match="does not fit"):
        rule_space(Design(family="cnn", width=16, depth=2, recipe=0), flat)
    assert_reproduces(rule_space(Design(family="mlp", width=16, depth=2, recipe=0), flat), (20,), (2,))


def test_design_of_recognises_a_rule_planner_seed():
    spec = TASKS["addigits"]
    design = Design(family="resnet", width=32, depth=3, recipe=2)
    source = design_source(spec, design)
    assert design_of(source) == design
    assert design_of(source, spec) == design
    assert design_of(source, TASKS["multdigits"]) is None  # another task's head: not this seed
    assert design_of(source.replace("nn.ReLU()", "nn.GELU()"), spec) is None  # edited: not the rule planner's
    assert design_of("class Architecture: pass\n") is None
    assert design_of('# agentnas-design: {"family": 3}\n') is None

