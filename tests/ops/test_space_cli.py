"""`agentnas space ...`: schema, show, builtin, validate, and one-line errors for bad files."""

import json

import msgspec
import pytest

from agentnas.agents.builtin_spaces import resnet18, wrn16_4
from agentnas.bus.space import Alternative, Slot, SlottedSpace, check_space, load_space, save_space, space_size
from agentnas.trainer_daemon.tasks import list_tasks
from tests.conftest import run_cli

SPECS = {spec.name: spec for spec in list_tasks()}


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_schema_is_the_json_schema_of_a_space():
    result = run_cli("space", "schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema["$ref"] == "#/$defs/SlottedSpace"
    assert {"SlottedSpace", "Slot", "Alternative"} <= set(schema["$defs"])


@pytest.mark.parametrize(("name", "task", "builder"), [("wrn16_4", "addigits", wrn16_4),
                                                       ("resnet18", "digitwave", resnet18)])
def test_builtin_writes_the_space_and_show_lists_it(tmp_path, name, task, builder):
    out = tmp_path / f"{name}.json"
    result = run_cli("--home", str(tmp_path / "home"), "space", "builtin", name, "--task", task, "--out", str(out))
    assert result.returncode == 0, result.stderr
    space = load_space(out)
    assert space == check_space(builder(SPECS[task]))[0]
    assert f"{space_size(space):,} configurations" in " ".join(result.stdout.split())
    shown = run_cli("--home", str(tmp_path / "home"), "space", "show", str(out), env={"COLUMNS": "160"})
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert f"builtin:{name}" in text and f"{space_size(space):,} configurations" in text
    for slot in space.slots:
        assert f" {slot.name} " in text
    assert text.count("* 0: ") == len(space.slots)  # the seed's choice marked once per slot
    assert "[identity]" in text and "[zero]" in text
    first = space.slots[0]
    assert "x".join(map(str, first.input_shape)) in text and "-> " + "x".join(map(str, first.output_shape)) in text


def test_builtin_refuses_unknown_names_and_tasks(tmp_path):
    home = str(tmp_path / "home")
    out = str(tmp_path / "space.json")
    assert_one_line_error(run_cli("--home", home, "space", "builtin", "vgg", "--task", "addigits", "--out", out),
                          "unknown built-in space 'vgg'", "wrn16_4, resnet18")
    assert_one_line_error(run_cli("--home", home, "space", "builtin", "wrn16_4", "--task", "nope", "--out", out),
                          "unknown task 'nope'")
    assert not (tmp_path / "space.json").exists()


def test_validate_runs_the_seed_configuration_in_the_sandbox(tmp_path):
    home = str(tmp_path / "home")
    out = tmp_path / "space.json"
    assert run_cli("--home", home, "space", "builtin", "wrn16_4", "--task", "addigits", "--out", str(out),
                   "--width-scale", "0.25").returncode == 0
    result = run_cli("--home", home, "space", "validate", str(out), "--task", "addigits", timeout=180)
    assert result.returncode == 0, (result.stdout, result.stderr)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("static check ok: 9 slots")
    assert lines[1].startswith("ok") and " seed " in lines[1] and f"params {load_space(out).seed_params:,}" in lines[1]
    assert lines[-1] == "1 of 1 configurations ok"


STEM = "class SLOT_stem_{k}(nn.Module):\n    def __init__(self):\n        super().__init__()\n" \
       "        self.conv = nn.Conv2d(3, {c}, 3, padding=1)\n\n    def forward(self, x):\n        return self.conv(x)\n"
SCAFFOLD = ("class Architecture(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
            "        self.stem = SLOT_stem()\n        self.head = nn.Linear(8, 28)\n\n"
            "    def forward(self, x):\n        x = self.stem(x)\n        return self.head(x.mean(dim=(2, 3)))\n")


def test_validate_all_checks_every_alternative_and_fails_on_one(tmp_path):
    # Alternative 1 declares the right shape but writes 4 channels: only running it shows that.
    slot = Slot(name="stem", class_name="SLOT_stem", input_shape=(3, 8, 8), output_shape=(8, 8, 8),
                alternatives=(Alternative(role="seed", description="3x3 conv to 8 channels", source=STEM.format(k=0, c=8)),
                              Alternative(description="3x3 conv to 4 channels (wrong)", source=STEM.format(k=1, c=4))))
    path = tmp_path / "space.json"
    save_space(SlottedSpace(scaffold_source=SCAFFOLD, slots=(slot,), seed_recipe={"lr": 0.01}), path)
    result = run_cli("--home", str(tmp_path / "home"), "space", "validate", str(path), "--task", "addigits", "--all",
                     timeout=240, env={"COLUMNS": "200"})
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stdout.splitlines()
    assert lines[1].startswith("ok") and "seed" in lines[1]
    status, label, rest = lines[2].split(maxsplit=2)
    assert status == "rejected" and label == "stem=1" and rest.startswith("3x3 conv to 4 channels (wrong): probe")
    assert lines[-1] == "1 of 2 configurations ok"


@pytest.mark.parametrize("command", ["show", "validate"])
def test_a_malformed_space_file_is_one_line_naming_the_json_path(tmp_path, command):
    space = msgspec.to_builtins(wrn16_4(SPECS["addigits"], width_scale=0.25))
    space["slots"][3]["interface"] = "triple"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(space))
    args = ["--task", "addigits"] if command == "validate" else []
    home = str(tmp_path / "home")
    assert_one_line_error(run_cli("--home", home, "space", command, str(bad), *args),
                          str(bad), "$.slots[3].interface", '"single" | "dual"')
    space["slots"][3]["interface"] = "single"
    space["slots"][3]["alternatives"][0]["role"] = "candidate"  # a glue slot must start with its Identity
    bad.write_text(json.dumps(space))
    assert_one_line_error(run_cli("--home", home, "space", command, str(bad), *args),
                          "slot 'group1_glue' ($.slots[3])", "Identity")
    bad.write_text("{not json")
    assert_one_line_error(run_cli("--home", home, "space", command, str(bad), *args), "not valid JSON")
    assert_one_line_error(run_cli("--home", home, "space", command, str(tmp_path / "missing.json"), *args),
                          "cannot read the space file")
