import json
import re

import msgspec
import pytest

from agentnas.bus.space import (
    DEFAULT_LR,
    Alternative,
    Configuration,
    Provenance,
    Slot,
    SlottedSpace,
    SpaceError,
    assemble,
    canonical_key,
    check_space,
    config_id,
    config_recipe,
    configuration_from_key,
    decode_space,
    describe_choices,
    encode_space,
    load_space,
    mutable_slots,
    offered_defaults,
    rename_alternative_class,
    save_space,
    seed_configuration,
    space_id,
    space_json_schema,
    space_size,
    validate_configuration,
    with_defaults,
)
from tests.conftest import REPO

EXAMPLE = REPO / "tests" / "fixtures" / "space_example.json"
DOC = REPO / "docs" / "SPACES.md"


def replace(struct, **changes):
    return msgspec.structs.replace(struct, **changes)


# ---------------------------------------------------------------- a generic builder: 1-D features, nn.Linear blocks


def linear_alt(name, k, d_in, d_out, dual=False, role="candidate"):
    args, add = ("x, residual", " + residual") if dual else ("x", "")
    source = (
        f"class SLOT_{name}_{k}(nn.Module):\n"
        f"    def __init__(self):\n        super().__init__()\n        self.f = nn.Linear({d_in}, {d_out})\n\n"
        f"    def forward(self, {args}):\n        return self.f(x){add}\n"
    )
    return Alternative(description=f"linear {k}", source=source, role=role)


def linear_slot(name, d_in, d_out, n=2, dual=False, kind="module"):
    alternatives = [linear_alt(name, k, d_in, d_out, dual, "seed" if k == 0 else "candidate") for k in range(n)]
    slot = Slot(
        name=name, class_name=f"SLOT_{name}", input_shape=(d_in,), output_shape=(d_out,),
        interface="dual" if dual else "single", residual_shape=(d_out,) if dual else None, kind=kind,
        alternatives=(),
    )
    if kind == "glue":
        identity = replace(offered_defaults(slot)[0], source=f"class SLOT_{name}_0(nn.Module):\n    def forward(self, {'x, residual' if dual else 'x'}):\n        return x\n")
        alternatives[0] = identity
    return replace(slot, alternatives=tuple(alternatives))


def chain_scaffold(slots, d_in=4, d_out=3):
    init = "".join(f"        self.{s.name} = SLOT_{s.name}()\n" for s in slots)
    calls = "".join(
        f"        x = self.{s.name}(x, x)\n" if s.interface == "dual" else f"        x = self.{s.name}(x)\n" for s in slots
    )
    return (
        "class Architecture(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        f"{init}\n    def forward(self, x):\n{calls}        return x\n"
    )


def chain_space(slots, **fields):
    return SlottedSpace(scaffold_source=chain_scaffold(slots), slots=tuple(slots), **fields)


def three_slots():
    return [linear_slot("a", 4, 8, n=3), linear_slot("b", 8, 8, n=4, dual=True), linear_slot("c", 8, 3, n=2)]


def example():
    return load_space(EXAMPLE)


# ---------------------------------------------------------------- the example, files and JSON


def test_the_docs_show_the_example_fixture():
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text(), flags=re.S)
    shown = [json.loads(b) for b in blocks if '"scaffold_source"' in b]
    assert shown == [json.loads(EXAMPLE.read_text())]


def test_example_decodes_with_defaults_and_passes_the_checks():
    space = example()
    assert space.slots[0].interface == "single" and space.slots[0].alternatives[1].role == "candidate"
    assert space.provenance.created_by == "hand-written" and space.seed_params is None
    checked, notes = check_space(space, source=str(EXAMPLE))
    assert checked == space and notes == []


def test_round_trip_is_exact_and_stable(tmp_path):
    space = example()
    path = tmp_path / "space.json"
    save_space(space, path)
    assert load_space(path) == space
    first = path.read_bytes()
    save_space(load_space(path), path)
    assert path.read_bytes() == first == encode_space(space)
    keys = list(json.loads(first))
    assert keys == sorted(keys)
    assert [p.name for p in tmp_path.iterdir()] == ["space.json"]  # no temporary file left


def test_unknown_fields_are_read_and_skipped():
    data = json.loads(EXAMPLE.read_text())
    data["added_in_format_2_maybe"] = 1
    data["slots"][0]["alternatives"][0]["flops"] = 12
    assert decode_space(json.dumps(data).encode(), "x.json") == example()


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda d: d["slots"][1].update(interface="triple"), 'space.json: $.slots[1].interface: Expected "single" | "dual", got "triple"'),
        (lambda d: d["slots"][0]["alternatives"][2].update(role="best"), 'space.json: $.slots[0].alternatives[2].role: Expected "seed" | "identity" | "zero" | "candidate", got "best"'),
        (lambda d: d["slots"][0].pop("alternatives"), "space.json: $.slots[0]: Object missing required field `alternatives`"),
        (lambda d: d.pop("scaffold_source"), "space.json: $: Object missing required field `scaffold_source`"),
        (lambda d: d["slots"][1].update(input_shape=[16, "a", 16]), "space.json: $.slots[1].input_shape[1]: Expected `int`, got `str`"),
        (lambda d: d.update(format=2), "space.json: $.format: this version reads format 1, got 2"),
    ],
)
def test_decode_errors_name_the_file_and_the_json_path(edit, expected):
    data = json.loads(EXAMPLE.read_text())
    edit(data)
    with pytest.raises(SpaceError) as err:
        decode_space(json.dumps(data).encode(), "space.json")
    assert str(err.value) == expected


def test_unreadable_or_not_json(tmp_path):
    with pytest.raises(SpaceError, match=r"missing\.json: cannot read the space file"):
        load_space(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{slots: ")
    with pytest.raises(SpaceError, match=r"bad\.json: not valid JSON"):
        load_space(tmp_path / "bad.json")


def test_schema_export():
    schema = space_json_schema()
    assert isinstance(schema, dict) and "$defs" in schema
    assert {"SlottedSpace", "Slot", "Alternative", "Provenance"} <= set(schema["$defs"])
    json.dumps(schema)


def test_space_id_ignores_provenance_and_tracks_content():
    space = example()
    assert re.fullmatch(r"spc_[0-9a-f]{12}", space_id(space))
    assert space_id(replace(space, provenance=Provenance(run_id="r2", created_by="slot_planner"))) == space_id(space)
    assert space_id(replace(space, task="another")) != space_id(space)


# ---------------------------------------------------------------- configurations


def test_canonical_key_and_config_id_are_stable_and_order_independent():
    space = example()
    config = Configuration(choices=(1, 2), lr_index=0)
    assert canonical_key(space, config) == "stem=1,stem_glue=2|lr=0.25"
    assert configuration_from_key(space, "stem_glue=2,stem=1|lr=0.25") == config  # any order names one network
    assert canonical_key(space, configuration_from_key(space, "stem_glue=2,stem=1|lr=0.25")) == canonical_key(space, config)
    assert config_id(space, config) == "cfg_803374fe4297"  # pinned: ids go into the log forever
    with pytest.raises(SpaceError, match="slots missing"):
        configuration_from_key(space, "stem=1|lr=0.25")
    with pytest.raises(SpaceError, match="lr multiplier '3.0' is not one of"):
        configuration_from_key(space, "stem=1,stem_glue=2|lr=3.0")


def test_config_ids_are_distinct_and_safe_in_ids():
    space = example()
    ids = {
        config_id(space, Configuration(choices=(i, j), lr_index=m))
        for i in range(3) for j in range(3) for m in range(5)
    }
    assert len(ids) == 45 == space_size(space)
    assert all(re.fullmatch(r"cfg_[A-Za-z0-9_-]+", i) for i in ids)


def test_space_size_is_exact():
    space = chain_space([linear_slot("a", 4, 4, n=3), linear_slot("b", 4, 4, n=4), linear_slot("c", 4, 4, n=2)])
    assert space_size(space) == 3 * 4 * 2 * 5 == 120
    big = chain_space([linear_slot(f"s{i}", 4, 4, n=8) for i in range(20)])
    assert space_size(big) == 8**20 * 5  # an int, not a float


def test_seed_configuration_and_mutable_slots():
    space = chain_space([linear_slot("a", 4, 4, n=3), linear_slot("b", 4, 4, n=1), linear_slot("c", 4, 3)])
    assert seed_configuration(space) == Configuration(choices=(0, 0, 0), lr_index=2)
    assert mutable_slots(space) == (0, 2)
    with pytest.raises(SpaceError, match=r"\$\.lr_multipliers: \[0\.5, 2\.0\] has no 1\.0"):
        seed_configuration(replace(space, lr_multipliers=(0.5, 2.0)))


def test_recipe_scales_the_seed_lr():
    space = example()
    assert config_recipe(space, Configuration(choices=(0, 0), lr_index=4)) == {
        "optimizer": "adamw", "lr": 0.002 * 4.0, "epochs": 10, "batch_size": 64
    }
    assert space.seed_recipe["lr"] == 0.002  # not mutated
    assert config_recipe(replace(space, seed_recipe={"epochs": 3}), Configuration(choices=(0, 0), lr_index=0)) == {
        "epochs": 3, "lr": DEFAULT_LR * 0.25
    }
    assert DEFAULT_LR == 1e-3  # trainer_daemon/recipe.py Recipe.lr


@pytest.mark.parametrize(
    "config, expected",
    [
        (Configuration(choices=(0,), lr_index=0), "configuration has 1 choices, the space has 2 slots"),
        (Configuration(choices=(0, 3), lr_index=0), "configuration: slot 'stem_glue': choice 3 out of range (3 alternatives)"),
        (Configuration(choices=(-1, 0), lr_index=0), "configuration: slot 'stem': choice -1 out of range (3 alternatives)"),
        (Configuration(choices=(0, 0), lr_index=5), "configuration: lr_index 5 out of range (5 multipliers)"),
    ],
)
def test_validate_configuration(config, expected):
    with pytest.raises(SpaceError) as err:
        validate_configuration(example(), config)
    assert str(err.value) == expected


def test_describe_choices():
    assert describe_choices(example(), Configuration(choices=(2, 1), lr_index=2)) == [
        ("stem", "two stacked 3x3 convolutions with GELU"),
        ("stem_glue", "squeeze-and-excitation channel gate (reduction 4)"),
    ]


# ---------------------------------------------------------------- assembly


def test_assembly_has_the_header_the_chosen_classes_the_aliases_and_the_scaffold():
    space = example()
    source = assemble(space, Configuration(choices=(1, 2), lr_index=3))
    assert source.startswith("import math\nimport torch\nfrom torch import nn\nimport torch.nn.functional as F\n")
    assert re.findall(r"^class (\w+)", source, flags=re.M) == ["SLOT_stem_1", "SLOT_stem_glue_2", "Architecture"]
    assert re.findall(r"^SLOT_\w+ = \w+$", source, flags=re.M) == ["SLOT_stem = SLOT_stem_1", "SLOT_stem_glue = SLOT_stem_glue_2"]
    assert source.index("SLOT_stem_glue = ") < source.index("class Architecture")
    assert source.endswith(space.scaffold_source)
    assert source == assemble(space, Configuration(choices=(1, 2), lr_index=0))  # lr is in the recipe, not the source


def test_assembled_sources_pass_the_static_gate():
    from agentnas.trainer_daemon.gate import check_source

    space = replace(example(), slots=tuple(with_defaults(s) for s in example().slots))
    for i in range(len(space.slots[0].alternatives)):
        for j in range(len(space.slots[1].alternatives)):
            assert check_source(assemble(space, Configuration(choices=(i, j), lr_index=0))) == []


def test_assembled_models_build_and_give_the_output_shape():
    torch = pytest.importorskip("torch")

    def run(source, x):
        namespace = {}
        exec(compile(source, "<assembled>", "exec"), namespace)
        model = namespace["Architecture"]()
        model.eval()
        with torch.no_grad():
            return model(x).shape

    space, _ = check_space(replace(example(), slots=tuple(with_defaults(s) for s in example().slots)))
    assert [len(s.alternatives) for s in space.slots] == [4, 4]  # stem: + Zero (shape changes); glue: + Zero
    for i in range(4):
        for j in range(4):
            shape = run(assemble(space, Configuration(choices=(i, j), lr_index=0)), torch.zeros(2, 3, 16, 16))
            assert tuple(shape) == (2, 10)
    dual, _ = check_space(chain_space([with_defaults(s) for s in three_slots()]))
    for k in range(len(dual.slots[1].alternatives)):  # seed, candidates, Identity, Zero (returns the residual)
        shape = run(assemble(dual, Configuration(choices=(0, k, 1), lr_index=0)), torch.zeros(5, 4))
        assert tuple(shape) == (5, 3)


# ---------------------------------------------------------------- Identity, Zero and renaming


def test_offered_defaults_follow_the_shapes():
    same = linear_slot("g", 8, 8, n=2)
    identity, zero = offered_defaults(same)
    assert (identity.role, zero.role) == ("identity", "zero")
    assert "class SLOT_g_2(nn.Module)" in identity.source and "return x\n" in identity.source
    assert "class SLOT_g_3(nn.Module)" in zero.source and "x.new_zeros((x.shape[0], 8))" in zero.source
    (only_zero,) = offered_defaults(linear_slot("h", 4, 8, n=1))
    assert only_zero.role == "zero" and "SLOT_h_1" in only_zero.source
    dual_identity, dual_zero = offered_defaults(linear_slot("r", 8, 8, n=1, dual=True))
    assert "def forward(self, x, residual):\n        return x\n" in dual_identity.source
    assert "return residual" in dual_zero.source


def test_with_defaults_adds_missing_roles_within_the_cap():
    slot = with_defaults(linear_slot("g", 8, 8, n=2))
    assert [a.role for a in slot.alternatives] == ["seed", "candidate", "identity", "zero"]
    assert with_defaults(slot) == slot
    glue = with_defaults(linear_slot("glue", 8, 8, n=3, kind="glue"))  # has Identity at 0: only Zero added, as index 3
    assert [a.role for a in glue.alternatives] == ["identity", "candidate", "candidate", "zero"]
    assert "class SLOT_glue_3(" in glue.alternatives[3].source
    full = with_defaults(linear_slot("f", 8, 8, n=7))
    assert [a.role for a in full.alternatives][-1] == "identity" and len(full.alternatives) == 8
    check_space(chain_space([slot, glue, full]))


def test_rename_alternative_class():
    source = (
        "import torch\n\nclass SepConv(nn.Module):\n    '''SepConv, kept in text'''\n"
        "    def __init__(self):\n        super(SepConv, self).__init__()\n\n    def forward(self, x):\n        return x  # SepConv\n"
    )
    renamed = rename_alternative_class(source, "SLOT_b_3")
    assert "class SLOT_b_3(nn.Module):" in renamed and "super(SLOT_b_3, self)" in renamed
    assert "'''SepConv, kept in text'''" in renamed and "# SepConv" in renamed
    helper_first = "class Cfg:\n    width = 8\n\nclass Net(nn.Module):\n    pass\n"
    assert "class SLOT_b_1(nn.Module)" in rename_alternative_class(helper_first, "SLOT_b_1")
    with pytest.raises(SpaceError, match="cannot tell which class"):
        rename_alternative_class("class A(nn.Module):\n    pass\nclass B(nn.Module):\n    pass\n", "SLOT_b_1")


# ---------------------------------------------------------------- caps


def test_caps_freeze_late_slots_and_trim_alternatives_with_notes():
    slots = [linear_slot(f"s{i}", 4, 4, n=3) for i in range(22)]
    slots[1] = linear_slot("s1", 4, 4, n=11)
    space, notes = check_space(chain_space(slots))
    assert notes == [
        "slot 's1': 11 alternatives, kept the first 8",
        "slot 's20' beyond the 20-slot cap: frozen to its seed choice (2 alternatives dropped)",
        "slot 's21' beyond the 20-slot cap: frozen to its seed choice (2 alternatives dropped)",
    ]
    assert [len(s.alternatives) for s in space.slots] == [3, 8] + [3] * 18 + [1, 1]
    assert len(space.slots) == 22 and mutable_slots(space) == tuple(range(20))
    assert space_size(space) == 3**19 * 8 * 5
    assert "class SLOT_s21_0" in assemble(space, seed_configuration(space))


def test_trimmed_alternatives_are_not_checked():
    slot = linear_slot("a", 4, 3, n=9)
    broken = replace(slot, alternatives=slot.alternatives[:8] + (Alternative(description="x", source="def ("),))
    space, notes = check_space(chain_space([broken]))
    assert len(space.slots[0].alternatives) == 8 and notes == ["slot 'a': 9 alternatives, kept the first 8"]


# ---------------------------------------------------------------- rejections


def with_slot(i, **changes):
    def edit(space):
        slots = list(space.slots)
        slots[i] = replace(slots[i], **changes)
        return replace(space, slots=tuple(slots))
    return edit


def with_alt(i, k, source, role="candidate"):
    def edit(space):
        alternatives = list(space.slots[i].alternatives)
        alternatives[k] = Alternative(description="edited", source=source, role=role)
        return with_slot(i, alternatives=tuple(alternatives))(space)
    return edit


def with_scaffold(find, new):
    def edit(space):
        assert find in space.scaffold_source
        return replace(space, scaffold_source=space.scaffold_source.replace(find, new))
    return edit


FWD = "    def forward(self, x):\n"
REJECTIONS = {
    "duplicate name": (with_slot(2, name="a", class_name="SLOT_a"), "$.slots[2].name: duplicate slot name 'a' (also $.slots[0])"),
    "name not an identifier": (with_slot(0, name="stage-1", class_name="SLOT_stage-1"), "$.slots[0].name: 'stage-1' is not a Python identifier"),
    "class name": (with_slot(0, class_name="SlotA"), "slot 'a' ($.slots[0]): class_name must be 'SLOT_a', got 'SlotA'"),
    "dual without residual shape": (with_slot(1, residual_shape=None), "slot 'b' ($.slots[1]): a dual-interface slot needs residual_shape"),
    "single with residual shape": (with_slot(0, residual_shape=(8,)), "slot 'a' ($.slots[0]): residual_shape is given but the interface is single"),
    "no alternatives": (with_slot(2, alternatives=()), "slot 'c' ($.slots[2]): no alternatives"),
    "glue without identity": (with_slot(1, kind="glue"), "slot 'b' ($.slots[1]): a glue slot's alternative 0 must be its Identity (role 'identity'), got role 'seed'"),
    "seed role late": (with_alt(0, 2, linear_alt("a", 2, 4, 8).source, role="seed"), "slot 'a' ($.slots[0]): alternative 2 has role 'seed'"),
    "alternative does not parse": (with_alt(0, 1, "class SLOT_a_1(nn.Module)\n    pass\n"), "slot 'a' alternative 1 ($.slots[0].alternatives[1].source): does not parse: line 1: expected ':'"),
    "alternative wrong class name": (with_alt(0, 1, linear_alt("a", 2, 4, 8).source), "slot 'a' alternative 1 ($.slots[0].alternatives[1].source): defines class SLOT_a_2, expected SLOT_a_1"),
    "alternative two classes": (with_alt(2, 0, "class Helper(nn.Module):\n    pass\n\n" + linear_alt("c", 0, 8, 3).source), "defines 2 top-level classes (Helper, SLOT_c_0); expected only class SLOT_c_0"),
    "alternative top-level helper": (with_alt(2, 1, "def helper(x):\n    return x\n\n" + linear_alt("c", 1, 8, 3).source), "line 1: top-level FunctionDef not allowed"),
    "alternative with constructor arguments": (with_alt(2, 1, "class SLOT_c_1(nn.Module):\n    def __init__(self, width):\n        super().__init__()\n"), "SLOT_c_1.__init__ must take no arguments besides self"),
    "alternative forward arity": (with_alt(1, 1, "class SLOT_b_1(nn.Module):\n    def forward(self, x):\n        return x\n"), "SLOT_b_1.forward must accept 2 tensor(s): forward(self, x, residual)"),
    "scaffold does not parse": (with_scaffold(FWD, "    def forward(self, x)\n"), "scaffold ($.scaffold_source): does not parse: line 8: expected ':'"),
    "scaffold without Architecture": (with_scaffold("class Architecture(", "class Net("), "scaffold ($.scaffold_source): does not define class Architecture at top level"),
    "slot class defined in scaffold": (with_scaffold("class Architecture(", "class SLOT_a(nn.Module):\n    pass\n\n\nclass Architecture("), "scaffold ($.scaffold_source): line 1: defines SLOT_a; slot classes are not written in the scaffold"),
    "slot instantiated with arguments": (with_scaffold("SLOT_a()", "SLOT_a(4, 8)"), "scaffold ($.scaffold_source): line 4: SLOT_a() is instantiated with arguments; slots take none"),
    "slot assigned to another attribute": (with_scaffold("self.a = SLOT_a()", "self.first = SLOT_a()"), "line 4: SLOT_a() must be assigned to self.a, not self.first"),
    "undeclared slot instantiated": (with_scaffold("        self.c = SLOT_c()\n", "        self.c = SLOT_c()\n        self.d = SLOT_d()\n"), "scaffold line 7: SLOT_d() is instantiated but no slot 'd' is declared"),
    "slot used outside __init__": (with_scaffold(FWD, FWD + "        k = SLOT_a\n"), "line 9: SLOT_a used outside 'self.<name> = SLOT_<name>()' in Architecture.__init__"),
    "declared slot never instantiated": (with_scaffold("        self.c = SLOT_c()\n", ""), "slot 'c' ($.slots[2]): never instantiated in the scaffold"),
    "slot never called": (with_scaffold("        x = self.c(x)\n", ""), "slot 'c' ($.slots[2]): instantiated but never called in Architecture.forward"),
    "single slot called with two": (with_scaffold("self.c(x)", "self.c(x, x)"), "scaffold line 11: slot 'c' is single-interface, called as self.c(x); got 2 argument(s)"),
    "dual slot called with one": (with_scaffold("self.b(x, x)", "self.b(x)"), "scaffold line 10: slot 'b' is dual-interface, called as self.b(x, residual); got 1 argument(s)"),
    "slot called with keywords": (with_scaffold("self.c(x)", "self.c(x=x)"), "slot 'c' is single-interface, called as self.c(x); got keyword or starred arguments"),
    "shape between consecutive slots": (with_slot(1, input_shape=(16,)), "scaffold line 10: slot 'a' outputs [8] but slot 'b' takes input [16]"),
    "shape of the residual": (with_slot(1, residual_shape=(2,), output_shape=(8,)), "scaffold line 10: slot 'a' outputs [8] but slot 'b' takes residual [2]"),
    "shape of a nested call": (with_scaffold("        x = self.a(x)\n", "        x = self.a(self.c(x))\n"), "scaffold line 9: slot 'c' outputs [3] but slot 'a' takes input [4]"),
    "shape inside a loop body": (with_scaffold("        x = self.a(x)\n", "        for _ in range(1):\n            x = self.c(x)\n            x = self.a(x)\n"), "scaffold line 11: slot 'c' outputs [3] but slot 'a' takes input [4]"),
    "no 1.0 multiplier": (lambda s: replace(s, lr_multipliers=(0.5, 2.0)), "$.lr_multipliers: [0.5, 2.0] has no 1.0"),
    "repeated multiplier": (lambda s: replace(s, lr_multipliers=(1.0, 1.0)), "$.lr_multipliers: repeated values in [1.0, 1.0]"),
    "bad seed lr": (lambda s: replace(s, seed_recipe={"lr": "fast"}), "$.seed_recipe.lr: expected a number, got 'fast'"),
    "no slots": (lambda s: replace(s, slots=()), "$.slots: a space needs at least one slot"),
}


@pytest.mark.parametrize("name", list(REJECTIONS))
def test_check_space_rejects(name):
    edit, expected = REJECTIONS[name]
    space = chain_space(three_slots())
    check_space(space)  # the unedited space passes
    with pytest.raises(SpaceError) as err:
        check_space(edit(space), source="space.json")
    message = str(err.value)
    assert "\n" not in message and message.startswith("space.json: ")
    assert expected in message


@pytest.mark.parametrize(
    "forward",
    [
        "        x = self.a(x)\n        x = x.view(x.shape[0], 8)\n        x = self.b(x, x)\n        x = self.c(x)\n        return x\n",
        "        y = self.a(x)\n        if y.shape[0] > 1:\n            y = y * 2\n        y = self.b(y, y)\n        return self.c(y)\n",
        "        outs = [self.a(x)]\n        x = self.b(outs[0], outs[0])\n        return self.c(x)\n",
    ],
)
def test_chains_broken_by_other_assignments_are_not_judged(forward):
    slots = three_slots()
    slots[1] = replace(slots[1], input_shape=(2, 4))  # a's [8] would not match b's input if the chain were seen
    space = chain_space(slots)
    head, _, _ = space.scaffold_source.partition(FWD)
    check_space(replace(space, scaffold_source=head + FWD + forward))
