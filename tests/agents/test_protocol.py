import pytest

from agentnas.agents.protocol import (
    CodeAnswer,
    Experiment,
    Explore,
    MalformedOutput,
    Report,
    RunCode,
    Stop,
    parse_code,
    parse_explorer,
    parse_planner,
    reask_message,
    referenced_arch_ids,
    report_allowed,
)
from agentnas.bus.messages import Proposal

EXPERIMENT = """\
I will start with two different families.

<summary>
The MLP (arch_001) reached 9.1% error; the small CNN (arch_002) ran out of memory
because of a 1024-wide first stage. Surprise: label smoothing helped. Next: CNNs
with residual connections and moderate width.
</summary>

<action>EXPERIMENT</action>

<proposal>
<arch_id>arch_003</arch_id>
<description>ResNet-style CNN: 3x3 conv stem to 32 channels, three stages of two
basic residual blocks (32, 64, 128 channels, stride 2 between stages), global
average pooling, linear head to 28 logits.</description>
<reasoning>Residual blocks train stably at this depth; the input is tiny so two
downsamplings are enough.</reasoning>
<recipe>{"optimizer": "adamw", "lr": 0.002, "weight_decay": 0.05,
 "scheduler": "cosine", "epochs": 40, "batch_size": 128, "label_smoothing": 0.1}</recipe>
</proposal>

<proposal>
<arch_id>arch_004</arch_id>
<description>arch_002 with the first stage reduced from 1024 to 64 channels and
dropout 0.2 before the head.</description>
<reasoning>Keeps arch_002's idea at a size that fits.</reasoning>
<recipe>
```json
{"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "scheduler": "cosine", "epochs": 40}
```
</recipe>
</proposal>
"""

KNOWN = ["arch_001", "arch_002"]


def test_realistic_experiment_parses():
    result = parse_planner(EXPERIMENT, n_parallel=4, known_arch_ids=KNOWN, require_summary=True)
    assert isinstance(result, Experiment)
    assert [p.arch_id for p in result.proposals] == ["arch_003", "arch_004"]
    first, second = result.proposals
    assert isinstance(first, Proposal)
    assert first.description.startswith("ResNet-style CNN") and "28 logits" in first.description
    assert first.reasoning.startswith("Residual blocks")
    assert first.recipe == {"optimizer": "adamw", "lr": 0.002, "weight_decay": 0.05, "scheduler": "cosine",
                            "epochs": 40, "batch_size": 128, "label_smoothing": 0.1}
    assert second.recipe["optimizer"] == "sgd"  # fenced JSON inside the tag is unwrapped
    assert first.source == ""
    assert result.summary.startswith("The MLP (arch_001)") and "Next:" in result.summary
    assert result.warnings == []


def test_explore_and_stop_parse():
    explore = parse_planner("<action>EXPLORE</action>\n<question>How balanced are the 28 classes?</question>",
                            n_parallel=4)
    assert explore == Explore(question="How balanced are the 28 classes?")
    stop = parse_planner(
        "<summary>Residual CNNs dominate.</summary>\n<action>STOP</action>\n<train>arch_002, arch_1\narch_002</train>",
        n_parallel=4, known_arch_ids=KNOWN,
    )
    assert stop == Stop(arch_ids=["arch_002", "arch_001"], summary="Residual CNNs dominate.")
    assert parse_planner("<action>STOP</action>", n_parallel=1).arch_ids == []


def test_tolerates_case_whitespace_and_fences():
    text = """```xml
< ACTION > experiment </ action >
<Proposal>
  <ARCH_ID> ARCH-7 </ARCH_ID>
  <Description>  MLP with two hidden layers of 256. </Description>
  <recipe>{"lr": 0.001}</recipe>
</Proposal>
```"""
    result = parse_planner(text, n_parallel=2, known_arch_ids=KNOWN)
    assert isinstance(result, Experiment)
    assert result.proposals[0].arch_id == "arch_007"
    assert result.proposals[0].description == "MLP with two hidden layers of 256."
    assert result.proposals[0].recipe == {"lr": 0.001}


def test_missing_ids_get_the_next_free_ones():
    text = """<action>EXPERIMENT</action>
<proposal><description>A</description><recipe>{}</recipe></proposal>
<proposal><arch_id>arch_010</arch_id><description>B</description><recipe>{}</recipe></proposal>
<proposal><description>C</description><recipe>{}</recipe></proposal>"""
    result = parse_planner(text, n_parallel=3, known_arch_ids=KNOWN)
    assert [p.arch_id for p in result.proposals] == ["arch_011", "arch_010", "arch_012"]
    assert any("assigned arch_011" in w for w in result.warnings)


def test_single_proposal_without_wrapper_is_accepted():
    text = "<action>EXPERIMENT</action><description>Small CNN</description><recipe>{\"lr\": 0.01}</recipe>"
    result = parse_planner(text, n_parallel=2)
    assert [p.arch_id for p in result.proposals] == ["arch_001"]


def test_more_than_n_parallel_is_truncated_with_a_warning():
    blocks = "".join(f"<proposal><arch_id>arch_{i:03d}</arch_id><description>d{i}</description>"
                     f"<recipe>{{}}</recipe></proposal>" for i in range(3, 8))
    result = parse_planner("<action>EXPERIMENT</action>" + blocks, n_parallel=2, known_arch_ids=KNOWN)
    assert [p.arch_id for p in result.proposals] == ["arch_003", "arch_004"]
    assert result.warnings == ["5 proposals but at most 2 per batch: kept the first 2, dropped 3"]


def test_invalid_recipe_json_is_kept_as_text_with_a_warning():
    text = "<action>EXPERIMENT</action><proposal><description>x</description><recipe>{lr: 0.1,}</recipe></proposal>"
    result = parse_planner(text, n_parallel=1)
    assert result.proposals[0].recipe == "{lr: 0.1,}"
    assert any("arch_001: recipe is not valid JSON" in w for w in result.warnings)
    listed = parse_planner(text.replace("{lr: 0.1,}", "[1, 2]"), n_parallel=1)
    assert listed.proposals[0].recipe == "[1, 2]" and "not an object" in listed.warnings[-1]
    missing = parse_planner(text.replace("<recipe>{lr: 0.1,}</recipe>", ""), n_parallel=1)
    assert missing.proposals[0].recipe == {} and "no <recipe>" in missing.warnings[-1]


@pytest.mark.parametrize(("text", "reason"), [
    ("I think a ResNet would be a good idea for this task, with cosine decay.", "prose only"),
    ('{"action": "EXPERIMENT", "proposals": [{"arch_id": "arch_003"}]}', "the answer is JSON"),
    ('```json\n{"action": "STOP"}\n```', "the answer is JSON"),
    ("<proposal><description>x</description></proposal>", "missing <action> tag"),
    ("<action>TRAIN</action><train>arch_001</train>", "unknown action 'TRAIN'"),
    ("<action>EXPLORE</action><action>STOP</action>", "more than one action"),
    ("<action>EXPERIMENT</action>Let me think about it.", "at least one <proposal>"),
    ("<action>EXPERIMENT</action><proposal><description>x</description>", "no closing </proposal>"),
    ("<action>EXPERIMENT</action><proposal><arch_id>resnet_a</arch_id><description>x</description></proposal>",
     "not of the form arch_NNN"),
    ("<action>EXPERIMENT</action><proposal><arch_id>arch_005</arch_id><description>x</description></proposal>"
     "<proposal><arch_id>arch_5</arch_id><description>y</description></proposal>", "used twice"),
    ("<action>EXPERIMENT</action><proposal><arch_id>arch_002</arch_id><description>x</description></proposal>",
     "already used in this run; new proposals need new ids (next free: arch_003)"),
    ("<action>EXPERIMENT</action><proposal><arch_id>arch_005</arch_id><reasoning>r</reasoning></proposal>",
     "has no <description>"),
    ("<action>EXPLORE</action><question> </question>", "EXPLORE needs a non-empty <question>"),
    ("<action>STOP</action><train>arch_001, arch_099</train>", "does not have: arch_099"),
])
def test_malformed_planner_answers_raise_with_a_useful_reason(text, reason):
    with pytest.raises(MalformedOutput) as caught:
        parse_planner(text, n_parallel=3, known_arch_ids=KNOWN)
    assert reason in caught.value.reason
    assert "\n" not in caught.value.reason


def test_summary_can_be_required():
    with pytest.raises(MalformedOutput, match="missing <summary>"):
        parse_planner("<action>EXPLORE</action><question>q?</question>", n_parallel=1, require_summary=True)


def test_n_parallel_must_be_positive():
    with pytest.raises(ValueError):
        parse_planner("<action>STOP</action>", n_parallel=0)


def test_referenced_arch_ids():
    text = "Take arch_004 and ARCH_2's stem; unlike arch-004, widen it. Not my_arch_9 or arch_0031x."
    assert referenced_arch_ids(text) == ["arch_004", "arch_002"]
    assert referenced_arch_ids(text, known=["arch_002"]) == ["arch_002"]
    assert referenced_arch_ids("a fresh design") == []


# ---------------------------------------------------------------- code executor

CODE = '''\
Here is the implementation.

```python
import torch
import torch.nn as nn


class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(192, 28))

    def forward(self, x):
        return self.net(x)
```

```json
{"optimizer": "adamw", "lr": 0.001, "epochs": 30}
```
'''


def test_realistic_code_answer_parses():
    answer = parse_code(CODE)
    assert isinstance(answer, CodeAnswer)
    assert answer.source.startswith("import torch\n") and answer.source.endswith("return self.net(x)\n")
    compile(answer.source, "arch.py", "exec")
    assert answer.recipe == {"optimizer": "adamw", "lr": 0.001, "epochs": 30}
    assert answer.notes == []


def test_code_picks_the_block_defining_architecture():
    text = "```python\ndef helper():\n    pass\n```\n" + CODE.replace("28)", "10)") + "\n" + CODE
    answer = parse_code(text)
    assert "nn.Linear(192, 28)" in answer.source and "helper" not in answer.source
    assert "used the last" in answer.notes[0]


def test_code_without_json_gets_an_empty_recipe_and_a_note():
    answer = parse_code(CODE.split("```json")[0])
    assert answer.recipe == {}
    assert any("no json training config" in n for n in answer.notes)


def test_bare_code_and_unclosed_fence_are_accepted_with_notes():
    bare = "import torch.nn as nn\nclass Architecture(nn.Module):\n    pass\n"
    assert parse_code(bare).source == bare
    cut = parse_code("```python\nclass Architecture(nn.Module):\n    def __init__(self):")
    assert cut.source.startswith("class Architecture") and any("not closed" in n for n in cut.notes)


@pytest.mark.parametrize(("text", "reason"), [
    ("I would use a ResNet here.", "no class Architecture in the answer"),
    ("```python\nclass Model(nn.Module):\n    pass\n```", "no class Architecture in the answer"),
    ("```python\n# class Architecture is below\nArchitecture = None\n```", "no class Architecture"),
    (CODE.replace('"epochs": 30}', '"epochs": 30,}'), "not valid JSON"),
    (CODE.replace('{"optimizer": "adamw", "lr": 0.001, "epochs": 30}', "[1, 2]"), "must be an object"),
])
def test_malformed_code_answers_raise(text, reason):
    with pytest.raises(MalformedOutput, match=reason):
        parse_code(text)


# ---------------------------------------------------------------- data explorer


def test_explorer_code_and_report():
    step = parse_explorer("Let me look.\n```python\nimport numpy as np\nprint(np.load('x.npy').shape)\n```")
    assert step == RunCode(code="import numpy as np\nprint(np.load('x.npy').shape)\n")
    report = parse_explorer("<report>\n1797 images, 8x8, balanced classes.\n</report>", steps_run=2)
    assert report == Report(text="1797 images, 8x8, balanced classes.")
    cut = parse_explorer("<report>\nTrain: 1078 samples", steps_run=1)
    assert cut == Report(text="Train: 1078 samples")


def test_explorer_report_before_any_code_is_refused():
    assert not report_allowed(0) and report_allowed(1)
    with pytest.raises(MalformedOutput, match="before any code has run"):
        parse_explorer("<report>Looks like images.</report>", steps_run=0)
    # with code in the same answer, the code is run instead of accepting the report
    mixed = "```python\nprint(1)\n```\n<report>done</report>"
    assert parse_explorer(mixed, steps_run=0) == RunCode(code="print(1)\n")
    assert parse_explorer(mixed, steps_run=1) == Report(text="done")


@pytest.mark.parametrize(("text", "reason"), [
    ("The data look like images.", "no ```python block to run and no <report>"),
    ("<report>  </report>", "the <report> is empty"),
])
def test_malformed_explorer_answers_raise(text, reason):
    with pytest.raises(MalformedOutput, match=reason):
        parse_explorer(text, steps_run=3)


# ---------------------------------------------------------------- re-ask


def test_reask_message_is_short_and_carries_the_reason():
    error = MalformedOutput("missing <action> tag:\n write one")
    assert error.reason == "missing <action> tag: write one"
    message = reask_message(error, attempt=2, max_attempts=3)
    assert "missing <action> tag: write one" in message
    assert "attempt 2 of 3" in message
    assert len(message) < 400
