import hashlib
import importlib.resources
import re

import pytest

from agentnas.agents.prompts import (
    BLIND_NAME,
    PromptError,
    ResultRow,
    batch_shape,
    load_template,
    published_best_text,
    recipe_whitelist,
    referenced_code_block,
    render,
    results_table,
    task_block,
    template_names,
)
from agentnas.trainer_daemon import gate, recipe
from agentnas.trainer_daemon.tasks import TaskSpec

SPEC = TaskSpec(
    name="addigits", input_shape=(3, 8, 8), output_shape=(28,), loss="cross_entropy",
    metric="error_pct", published_best=3.5, description="Sum of three handwritten addigits digits.",
)
DENSE = TaskSpec(name="digitsmooth", input_shape=(1, 8, 8), output_shape=(1, 8, 8),
                 loss="relative_l2", metric="relative_l2", description="Smooth the digitsmooth images.")

EXPECTED = {
    "planner_system", "planner_turn", "explorer_system", "explorer_turn", "explorer_output",
    "code_executor_system", "code_executor_implement", "code_executor_fix",
    "shared_recipe_whitelist", "shared_reask",
}


def variables_for(name: str, spec=SPEC, blind: bool = False) -> dict:
    values = {var: f"<{var}>" for var in load_template(name).variables()}
    if "task" in values:
        values["task"] = task_block(spec, blind)
    if "published_best" in values:
        values["published_best"] = published_best_text(spec.published_best, blind=blind)
    return values


def test_every_expected_template_exists():
    assert EXPECTED <= set(template_names())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_template_renders_with_all_its_variables(name):
    values = variables_for(name)
    rendered = render(name, **values)
    assert rendered.template == name
    assert len(rendered.template_hash) == 64
    assert "$" not in rendered.text.replace("$$", "")  # nothing left unfilled
    for var, value in values.items():
        assert str(value) in rendered.text, f"{var} not placed"


def test_system_prompts_start_with_the_routing_line():
    agents = {"planner_system": "planner", "explorer_system": "explorer",
              "code_executor_system": "code_executor", "modularizer_system": "modularizer",
              "slot_planner_system": "slot_planner"}
    for name, agent in agents.items():
        first = render(name, **variables_for(name)).text.splitlines()[0]
        assert first == f"agentnas-agent: {agent}"
    # and no other template pretends to be a system prompt
    for name in set(template_names()) - set(agents):
        assert not load_template(name).template.startswith("agentnas-agent:")


def test_missing_variable_raises_naming_it():
    values = variables_for("planner_turn")
    del values["leaderboard"]
    with pytest.raises(PromptError, match="missing variable.*leaderboard"):
        render("planner_turn", **values)


def test_extra_variable_raises_naming_it():
    with pytest.raises(PromptError, match="unknown variable.*colour"):
        render("planner_system", colour="blue")


def test_missing_template_raises_naming_it():
    with pytest.raises(PromptError, match="planner_nonsense"):
        render("planner_nonsense")
    with pytest.raises(PromptError, match="not a template name"):
        load_template("../README")


def test_values_are_inserted_verbatim():
    text = render("shared_reask", reason="cost was $5 and ${x}", attempt=2, max_attempts=3).text
    assert "cost was $5 and ${x}" in text and "attempt 2 of 3" in text


def test_hash_is_the_file_sha256_stable_and_follows_edits(tmp_path):
    packaged = importlib.resources.files("agentnas.prompts") / "planner_system.md"
    expected = hashlib.sha256(packaged.read_bytes()).hexdigest()
    assert render("planner_system").template_hash == expected == render("planner_system").template_hash

    (tmp_path / "demo_turn.md").write_text("Hello $who, {\"json\": true}\n")
    first = render("demo_turn", root=tmp_path, who="planner")
    assert first.text == 'Hello planner, {"json": true}\n'
    assert first.template_hash == render("demo_turn", root=tmp_path, who="x").template_hash
    (tmp_path / "demo_turn.md").write_text("Hi $who\n")
    assert render("demo_turn", root=tmp_path, who="planner").template_hash != first.template_hash


def test_a_stray_dollar_in_a_template_is_refused(tmp_path):
    (tmp_path / "bad_turn.md").write_text("costs $ 5\n")
    with pytest.raises(PromptError, match=r"bad_turn.*\$\$"):
        render("bad_turn", root=tmp_path)


def test_template_names_skip_readme(tmp_path):
    (tmp_path / "README.md").write_text("docs $x")
    (tmp_path / "a_b.md").write_text("x")
    (tmp_path / "notes.txt").write_text("x")
    assert template_names(root=tmp_path) == ["a_b"]


def test_readme_documents_every_template_and_variable():
    readme = (importlib.resources.files("agentnas.prompts") / "README.md").read_text()
    for name in template_names():
        assert f"### {name}" in readme, name
        section = readme.split(f"### {name}", 1)[1].split("\n### ", 1)[0]
        for var in load_template(name).variables():
            assert f"${var}" in section, f"{name}: ${var} undocumented"


# ---------------------------------------------------------------- blind mode


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("spec", [SPEC, DENSE])
def test_blind_rendering_never_names_the_task(name, spec):
    text = render(name, **variables_for(name, spec, blind=True)).text
    assert spec.name not in text.lower()
    assert spec.description not in text
    if "task" in load_template(name).variables():
        assert BLIND_NAME in text


def test_blind_task_block_is_the_minimal_spec():
    text = task_block(SPEC, blind=True)
    assert text.splitlines() == [
        "Task: TASK_X (anonymous; this minimal specification is all that is known)",
        "Input per sample: shape (3, 8, 8)",
        "Output per sample: 28 class logits, shape (28,)",
        "Loss (fixed): cross_entropy",
        "Metric: lower is better",
    ]
    assert "error_pct" not in text and "3.5" not in text
    assert published_best_text(3.5, blind=True) == "not shown (anonymous task)"


def test_full_task_block_and_mapping_input():
    text = task_block(SPEC, blind=False)
    assert "Task: addigits" in text and SPEC.description in text
    assert "Metric: error_pct, lower is better" in text
    as_mapping = task_block({"name": "t", "input_shape": [1, 64], "output_shape": [1, 64],
                             "loss": "mse", "metric": "relative_l2"}, blind=False)
    assert "Output per sample: shape (1, 64)" in as_mapping
    assert "class" not in as_mapping
    with pytest.raises(PromptError, match="input_shape"):
        task_block({"name": "t"}, blind=True)


def test_published_best_texts():
    assert published_best_text(None, blind=False) == "not known for this task"
    assert published_best_text(3.5, blind=False).startswith("3.5 ")


# ---------------------------------------------------------------- shared blocks


def test_whitelist_fragment_matches_the_trainer():
    text = recipe_whitelist()
    for word in (*recipe.OPTIMIZERS, *recipe.SCHEDULERS, *recipe.AUGMENTATIONS):
        assert f'"{word}"' in text, word
    for field in recipe.Recipe.__struct_fields__:
        assert field in text, field
    for params in recipe._SCHEDULER_PARAMS.values():
        for key in params:
            assert key in text, key
    for params in recipe._AUG_PARAMS.values():
        for key in params:
            assert key in text, key


def test_code_executor_prompt_lists_only_gate_modules():
    text = render("code_executor_system").text
    listed = set(re.findall(r"\b(torch(?:\.nn(?:\.functional|\.init)?)?|math|functools|itertools|collections"
                            r"|typing|dataclasses|numbers|enum|abc|operator|copy)\b", text))
    assert listed <= gate.ALLOWED_MODULES
    assert {"torch", "torch.nn", "torch.nn.functional", "math"} <= listed


def test_results_table_and_referenced_code():
    rows = [ResultRow(arch_id="arch_002", status="ok", val_metric=3.21456, params=12345),
            ResultRow(arch_id="arch_001", status="oom", reason="out of\nmemory")]
    table = results_table(rows)
    assert "| arch_002 | 3.215 | 12,345 | ok |" in table
    assert "| arch_001 | - | - | oom | out of memory |" in table
    assert table.index("arch_002") < table.index("arch_001")
    assert results_table([]) == "none yet"
    assert referenced_code_block({}) == "none"
    block = referenced_code_block({"arch_004": "class Architecture: pass\n"})
    assert block == "## arch_004\n\n```python\nclass Architecture: pass\n```"
    assert batch_shape((3, 8, 8)) == "(batch, 3, 8, 8)"
