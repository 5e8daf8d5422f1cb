"""Prompt templates: loading, strict rendering, and the small text blocks they share.

Templates are the `prompts/*.md` files of the `agentnas.prompts` package, written
in `string.Template` syntax: `$name` or `${name}` is a variable, `$$` a literal
dollar. That syntax was chosen over str.format so braces in JSON and code
examples need no escaping. Rendering is strict: a missing template, a missing
variable or an unused (extra) variable raises PromptError, so a prompt never
goes out with a hole in it. Every render carries the template's name and the
sha256 of its file, which the llm.requested event records.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re
import string
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec

__all__ = [
    "BLIND_NAME",
    "PromptError",
    "PromptTemplate",
    "Rendered",
    "ResultRow",
    "batch_shape",
    "load_template",
    "published_best_text",
    "recipe_whitelist",
    "referenced_code_block",
    "render",
    "results_table",
    "task_block",
    "template_names",
]

BLIND_NAME = "TASK_X"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_SUFFIX = ".md"


class PromptError(ValueError):
    """A template that cannot be loaded or rendered; the message names it."""


class PromptTemplate(string.Template):
    """A string.Template that knows its file name and content hash."""

    def __init__(self, text: str, *, name: str, sha256: str) -> None:
        super().__init__(text)
        self.name = name
        self.sha256 = sha256

    def variables(self) -> set[str]:
        return set(self.get_identifiers())


class Rendered(msgspec.Struct, frozen=True, kw_only=True):
    text: str
    template: str  # template name, e.g. "planner_turn"
    template_hash: str  # sha256 of the template file


def _root(root: Path | None) -> Any:
    # A Traversable for the installed package data, or a plain folder (tests, overrides).
    return importlib.resources.files("agentnas.prompts") if root is None else Path(root)


def template_names(*, root: Path | None = None) -> list[str]:
    """Names of every template, sorted (README.md is documentation, not a template)."""
    names = []
    for entry in _root(root).iterdir():
        stem = entry.name.removesuffix(_SUFFIX)
        if entry.name.endswith(_SUFFIX) and entry.name != "README.md" and _NAME.match(stem):
            names.append(stem)
    return sorted(names)


def load_template(name: str, *, root: Path | None = None) -> PromptTemplate:
    """The template `name` (with or without `.md`), read fresh so the hash follows the file."""
    stem = name.removesuffix(_SUFFIX)
    if not _NAME.match(stem):
        raise PromptError(f"prompt template {name!r}: not a template name (lowercase letters, digits, _)")
    entry = _root(root) / f"{stem}{_SUFFIX}"
    try:
        data = entry.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise PromptError(f"prompt template {stem!r}: no file {stem}{_SUFFIX} in the prompts package") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PromptError(f"prompt template {stem!r}: not UTF-8 ({exc.reason})") from None
    template = PromptTemplate(text, name=stem, sha256=hashlib.sha256(data).hexdigest())
    if not template.is_valid():
        raise PromptError(f"prompt template {stem!r}: a '$' that is not a variable (write '$$' for a dollar)")
    return template


def render(name: str, /, *, root: Path | None = None, **variables: Any) -> Rendered:
    """Fill template `name` with exactly its variables; values are inserted verbatim."""
    template = load_template(name, root=root)
    wanted = template.variables()
    missing = sorted(wanted - variables.keys())
    if missing:
        raise PromptError(f"prompt template {template.name!r}: missing variable(s) {', '.join(missing)}")
    extra = sorted(variables.keys() - wanted)
    if extra:
        raise PromptError(f"prompt template {template.name!r}: unknown variable(s) {', '.join(extra)}")
    text = template.substitute({key: str(value) for key, value in variables.items()})
    return Rendered(text=text, template=template.name, template_hash=template.sha256)


# ---------------------------------------------------------------- shared text blocks


def _field(spec_like: Any, key: str, default: Any = None) -> Any:
    if isinstance(spec_like, Mapping):
        return spec_like.get(key, default)
    return getattr(spec_like, key, default)


def _dims(shape: Iterable[int]) -> str:
    return ", ".join(str(int(d)) for d in shape)


def _tuple(shape: tuple[int, ...]) -> str:
    return f"({_dims(shape)},)" if len(shape) == 1 else f"({_dims(shape)})"


def batch_shape(shape: Iterable[int]) -> str:
    """(3, 8, 8) -> '(batch, 3, 8, 8)': the shape forward sees or returns."""
    return f"(batch, {_dims(shape)})"


def task_block(spec_like: Any, blind: bool) -> str:
    """The task as every prompt shows it: full description, or the minimal blind spec.

    `spec_like` is a TaskSpec or any object/mapping with name, description,
    input_shape, output_shape, loss and metric. Blind: only TASK_X, shapes, the
    number of classes, the loss and the metric direction. Neither the name,
    the description nor the metric's name appears, so no prompt can leak them.
    """
    input_shape = tuple(_field(spec_like, "input_shape") or ())
    output_shape = tuple(_field(spec_like, "output_shape") or ())
    loss = str(_field(spec_like, "loss", "") or "")
    if not input_shape or not output_shape or not loss:
        raise PromptError("task block: input_shape, output_shape and loss are required")
    classes = output_shape[0] if loss == "cross_entropy" and len(output_shape) == 1 else None
    if classes is not None:
        output_line = f"Output per sample: {classes} class logits, shape {_tuple(output_shape)}"
    else:
        output_line = f"Output per sample: shape {_tuple(output_shape)}"
    input_line = f"Input per sample: shape {_tuple(input_shape)}"
    if blind:
        lines = [
            f"Task: {BLIND_NAME} (anonymous; this minimal specification is all that is known)",
            input_line,
            output_line,
            f"Loss (fixed): {loss}",
            "Metric: lower is better",
        ]
        return "\n".join(lines)
    name = str(_field(spec_like, "name", "") or "unnamed")
    metric = str(_field(spec_like, "metric", "") or "validation error")
    description = str(_field(spec_like, "description", "") or "").strip()
    lines = [f"Task: {name}"]
    if description:
        lines += ["", description, ""]
    lines += [input_line, output_line, f"Loss (fixed): {loss}", f"Metric: {metric}, lower is better"]
    return "\n".join(lines)


def published_best_text(value: float | None, *, blind: bool) -> str:
    """The best published result, hidden for blind tasks (a known score can name the dataset)."""
    if blind:
        return "not shown (anonymous task)"
    if value is None:
        return "not known for this task"
    return f"{value:g} (same metric, lower is better)"


def recipe_whitelist(*, root: Path | None = None) -> str:
    """The allowed recipe fields, one fragment file shared by planner and code executor."""
    return render("shared_recipe_whitelist", root=root).text.strip()


class ResultRow(msgspec.Struct, frozen=True, kw_only=True):
    """One line of a leaderboard or of a batch's results, as the planner sees it."""

    arch_id: str
    status: str  # ok | rejected | oom | timeout | error
    val_metric: float | None = None
    params: int | None = None
    reason: str = ""  # one line, for failures


def results_table(rows: Iterable[ResultRow], *, empty: str = "none yet") -> str:
    """A plain-text table (arch, metric, params, status, note); rows keep their order."""
    lines = []
    for row in rows:
        metric = "-" if row.val_metric is None else f"{row.val_metric:.4g}"
        params = "-" if row.params is None else f"{row.params:,}"
        note = " ".join(row.reason.split())[:200]
        lines.append(f"| {row.arch_id} | {metric} | {params} | {row.status} | {note} |")
    if not lines:
        return empty
    return "\n".join(["| arch | val metric | params | status | note |", "| --- | --- | --- | --- | --- |", *lines])


def referenced_code_block(codes: Mapping[str, str]) -> str:
    """Full code of each earlier architecture a description names, or 'none'."""
    if not codes:
        return "none"
    parts = [f"## {arch_id}\n\n```python\n{source.rstrip()}\n```" for arch_id, source in codes.items()]
    return "\n\n".join(parts)
