"""Parsing LLM answers into typed results, and the bounded re-ask message.

Every parser either returns a typed result or raises MalformedOutput with one
line that says what was wrong and what to write instead; that line is sent back
to the model in a re-ask (see reask_message). Parsers never crash on odd text.

Decisions (documented in prompts/README.md as well):
- More proposals than n_parallel: the first n_parallel are kept and the rest
  dropped with a warning on the result. Truncating costs nothing, while a
  re-ask costs a whole LLM call for proposals that were fine.
- A recipe that is not a JSON object is kept as the raw string, with a
  warning. The Code Executor reads it and writes the json config that is
  actually trained, so a typo in the planner's recipe need not cost a re-ask.
- Arch ids: `arch_7`, `ARCH-007` are read as arch_007; anything else in
  <arch_id> is an error, as is an id used twice in a batch or one already
  used in the run. A proposal without an id gets the next free one.
- STOP with no <train> (or no ids in it) means "the pipeline picks the top 8".
- parse_code: if several python blocks define Architecture, the last wins (a
  model that corrects itself mid-answer means the later one).
- parse_explorer: a <report> ends the exploration even when the answer also
  holds code, except before any code has run, when the code is run instead
  (or, without code, the answer is refused).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

import msgspec

from agentnas.agents.prompts import render
from agentnas.bus.messages import Proposal

__all__ = [
    "ACTIONS",
    "CodeAnswer",
    "Experiment",
    "Explore",
    "MalformedOutput",
    "Report",
    "RunCode",
    "Stop",
    "format_arch_id",
    "parse_code",
    "parse_explorer",
    "parse_planner",
    "reask_message",
    "referenced_arch_ids",
    "report_allowed",
]

ACTIONS = ("EXPLORE", "EXPERIMENT", "STOP")
_MAX_REASON = 300


class MalformedOutput(ValueError):
    """An LLM answer that cannot be used; `reason` is one line, fit to send back to the model."""

    def __init__(self, reason: str) -> None:
        reason = " ".join(str(reason).split())[:_MAX_REASON]
        super().__init__(reason)
        self.reason = reason


class Explore(msgspec.Struct, frozen=True, kw_only=True):
    question: str
    summary: str = ""


class Experiment(msgspec.Struct, frozen=True, kw_only=True):
    proposals: list[Proposal]
    summary: str = ""
    warnings: list[str] = []  # what the parser dropped or assumed


class Stop(msgspec.Struct, frozen=True, kw_only=True):
    arch_ids: list[str] = []  # best first; empty = the pipeline picks the top 8
    summary: str = ""


class CodeAnswer(msgspec.Struct, frozen=True, kw_only=True):
    source: str
    recipe: dict = {}  # {} when the answer had no json block (notes say so)
    notes: list[str] = []


class RunCode(msgspec.Struct, frozen=True, kw_only=True):
    code: str


class Report(msgspec.Struct, frozen=True, kw_only=True):
    text: str


# ---------------------------------------------------------------- text helpers

_ID_MENTION = re.compile(r"(?<![A-Za-z0-9_])arch[_-]?(\d{1,6})(?![A-Za-z0-9_])", re.IGNORECASE)
_LOOSE_ID = re.compile(r"^arch[\s_-]*(\d{1,6})$", re.IGNORECASE)
_FENCE_OPEN = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([\w+.-]*)")
_ARCH_CLASS = re.compile(r"^[ \t]*class[ \t]+Architecture[ \t]*[(:]", re.MULTILINE)
_PY_LANGS = frozenset({"python", "py", "python3", "py3"})


def format_arch_id(number: int) -> str:
    return f"arch_{number:03d}"


def _id_number(arch_id: str) -> int | None:
    match = _LOOSE_ID.match(arch_id.strip())
    return int(match.group(1)) if match else None


def _tag_re(tag: str) -> re.Pattern[str]:
    # Tolerates case, inner whitespace and arch_id / arch-id spellings.
    name = tag.replace("_", r"[_\- ]?")
    return re.compile(rf"<\s*{name}\s*>(.*?)<\s*/\s*{name}\s*>", re.IGNORECASE | re.DOTALL)


def _open_re(tag: str) -> re.Pattern[str]:
    return re.compile(rf"<\s*{tag}\s*>", re.IGNORECASE)


def _blocks(text: str, tag: str) -> list[str]:
    return [m.group(1) for m in _tag_re(tag).finditer(text)]


def _first(text: str, tag: str) -> str | None:
    found = _blocks(text, tag)
    return _clean(found[0]) if found else None


def _clean(value: str) -> str:
    """Strip whitespace and a code fence wrapped around a tag's content."""
    value = value.strip()
    fences = _fences(value)
    if len(fences) == 1 and value.startswith(("```", "~~~")):
        return fences[0][1].strip()
    return value


def _fences(text: str) -> list[tuple[str, str, bool]]:
    """Fenced blocks as (language, body, closed), in order; an unclosed one runs to the end."""
    found: list[tuple[str, str, bool]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE_OPEN.match(lines[i])
        if not opening:
            i += 1
            continue
        marker, lang = opening.group(1), opening.group(2).lower()
        body: list[str] = []
        i += 1
        closed = False
        while i < len(lines):
            stripped = lines[i].strip()
            if stripped and set(stripped) == {marker[0]} and len(stripped) >= len(marker):
                closed = True
                i += 1
                break
            body.append(lines[i])
            i += 1
        found.append((lang, "\n".join(body), closed))
    return found


def _looks_like_json(text: str) -> bool:
    body = _clean(text)
    if not body.startswith(("{", "[")):
        return False
    try:
        json.loads(body)
    except ValueError:
        return body.endswith(("}", "]"))
    return True


# ---------------------------------------------------------------- planner


def parse_planner(
    text: str,
    *,
    n_parallel: int,
    known_arch_ids: Iterable[str] = (),
    require_summary: bool = False,
) -> Explore | Experiment | Stop:
    """Read a Planner answer; raises MalformedOutput with a one-line reason.

    `known_arch_ids` are the ids already used in the run (proposed before, with
    or without results); `require_summary` is set on turns that follow results.
    """
    if n_parallel < 1:
        raise ValueError(f"n_parallel must be >= 1, got {n_parallel}")
    known = {format_arch_id(n) for n in (_id_number(a) for a in known_arch_ids) if n is not None}
    action = _action(text)
    summary = _first(text, "summary") or ""
    if require_summary and not summary:
        raise MalformedOutput(
            "missing <summary>: after results, start with <summary>what worked, what failed, "
            "surprises, next direction</summary>"
        )
    if action == "EXPLORE":
        question = _first(text, "question")
        if not question:
            raise MalformedOutput("EXPLORE needs a non-empty <question>...</question> for the Data Explorer")
        return Explore(question=question, summary=summary)
    if action == "STOP":
        return Stop(arch_ids=_stop_ids(text, known), summary=summary)
    proposals, warnings = _proposals(text, n_parallel, known)
    return Experiment(proposals=proposals, summary=summary, warnings=warnings)


def _action(text: str) -> str:
    values = [_clean(v) for v in _blocks(text, "action")]
    if not values:
        # An unclosed <action>WORD is still unambiguous.
        loose = re.search(r"<\s*action\s*>\s*([A-Za-z_]+)", text, re.IGNORECASE)
        values = [loose.group(1)] if loose else []
    if not values:
        if _looks_like_json(text):
            raise MalformedOutput(
                "the answer is JSON, but tags are expected: write <action>EXPLORE|EXPERIMENT|STOP</action> "
                "and the tags that go with it, not JSON"
            )
        if not re.search(r"<\s*/?\s*[A-Za-z_]+\s*>", text):
            raise MalformedOutput(
                "the answer is prose only: no tags found; write <action>EXPLORE|EXPERIMENT|STOP</action> "
                "and the tags that go with it"
            )
        raise MalformedOutput(
            "missing <action> tag: write <action>EXPLORE</action>, <action>EXPERIMENT</action> "
            "or <action>STOP</action>"
        )
    actions = {re.sub(r"[^A-Z_]", "", v.upper()) for v in values}
    if len(actions) > 1:
        raise MalformedOutput(f"more than one action ({', '.join(sorted(actions))}): take exactly one per turn")
    action = actions.pop()
    if action not in ACTIONS:
        shown = values[0][:40]
        raise MalformedOutput(f"unknown action {shown!r}: the action must be EXPLORE, EXPERIMENT or STOP")
    return action


def _proposals(text: str, n_parallel: int, known: set[str]) -> tuple[list[Proposal], list[str]]:
    blocks = _blocks(text, "proposal")
    opened = len(_open_re("proposal").findall(text))
    if opened > len(blocks):
        raise MalformedOutput(
            f"proposal {len(blocks) + 1} has no closing </proposal> tag (was the answer cut off?); "
            "close every <proposal> block"
        )
    if not blocks and len(_blocks(text, "description")) == 1:
        blocks = [text]  # a single proposal written without its <proposal> wrapper
    if not blocks:
        raise MalformedOutput("EXPERIMENT needs at least one <proposal>...</proposal> block")
    warnings: list[str] = []
    if len(blocks) > n_parallel:
        warnings.append(
            f"{len(blocks)} proposals but at most {n_parallel} per batch: kept the first {n_parallel}, "
            f"dropped {len(blocks) - n_parallel}"
        )
        blocks = blocks[:n_parallel]

    ids: list[str | None] = []
    for index, block in enumerate(blocks, start=1):
        raw_id = _first(block, "arch_id")
        if not raw_id:
            ids.append(None)
            continue
        number = _id_number(raw_id)
        if number is None:
            raise MalformedOutput(f"proposal {index}: arch id {raw_id[:40]!r} is not of the form arch_NNN")
        arch_id = format_arch_id(number)
        if arch_id in ids:
            raise MalformedOutput(f"proposal {index}: {arch_id} is used twice in this batch; give each its own id")
        if arch_id in known:
            raise MalformedOutput(
                f"proposal {index}: {arch_id} is already used in this run; new proposals need new ids "
                f"(next free: {format_arch_id(_next_free(known, ids))})"
            )
        ids.append(arch_id)

    proposals = []
    for index, (block, arch_id) in enumerate(zip(blocks, ids, strict=True), start=1):
        if arch_id is None:
            arch_id = format_arch_id(_next_free(known, ids))
            ids[index - 1] = arch_id
            warnings.append(f"proposal {index} had no <arch_id>; assigned {arch_id}")
        description = _first(block, "description")
        if not description:
            raise MalformedOutput(f"proposal {index} ({arch_id}) has no <description>; describe what to build")
        recipe, warning = _recipe(_first(block, "recipe"), arch_id)
        if warning:
            warnings.append(warning)
        proposals.append(Proposal(
            arch_id=arch_id,
            description=description,
            reasoning=_first(block, "reasoning") or "",
            recipe=recipe,
        ))
    return proposals, warnings


def _next_free(known: Iterable[str], taken: Iterable[str | None]) -> int:
    numbers = [_id_number(a) for a in [*known, *(t for t in taken if t)]]
    return max([n for n in numbers if n is not None], default=0) + 1


def _recipe(raw: str | None, arch_id: str) -> tuple[dict | str, str | None]:
    if not raw:
        return {}, f"{arch_id}: no <recipe>; the trainer's defaults apply unless the Code Executor sets them"
    try:
        value = json.loads(raw)
    except ValueError as exc:
        return raw, f"{arch_id}: recipe is not valid JSON ({exc}); passed on as text"
    if not isinstance(value, dict):
        return raw, f"{arch_id}: recipe is JSON but not an object; passed on as text"
    return value, None


def _stop_ids(text: str, known: set[str]) -> list[str]:
    train = _first(text, "train") or ""
    ids: list[str] = []
    for match in _ID_MENTION.finditer(train):
        arch_id = format_arch_id(int(match.group(1)))
        if arch_id not in ids:
            ids.append(arch_id)
    unknown = [a for a in ids if a not in known]
    if unknown:
        raise MalformedOutput(
            f"STOP names architectures this run does not have: {', '.join(unknown)}; "
            "name only evaluated arch ids in <train>"
        )
    return ids


def referenced_arch_ids(description: str, known: Iterable[str] | None = None) -> list[str]:
    """arch_NNN ids mentioned in a description, in order, once each (only `known` ones if given)."""
    allowed = None if known is None else set(known)
    found: list[str] = []
    for match in _ID_MENTION.finditer(description):
        arch_id = format_arch_id(int(match.group(1)))
        if arch_id not in found and (allowed is None or arch_id in allowed):
            found.append(arch_id)
    return found


# ---------------------------------------------------------------- code executor


def parse_code(text: str) -> CodeAnswer:
    """The python block defining `class Architecture` and the json training config."""
    fences = _fences(text)
    notes: list[str] = []
    candidates = [
        (body, closed) for lang, body, closed in fences
        if (lang in _PY_LANGS or not lang) and _ARCH_CLASS.search(body)
    ]
    if candidates:
        source, closed = candidates[-1]
        if len(candidates) > 1:
            notes.append(f"{len(candidates)} python blocks define Architecture; used the last")
        if not closed:
            notes.append("the python block is not closed (answer cut off?)")
    elif not fences and _ARCH_CLASS.search(text):
        source = text  # bare code without fences
        notes.append("no code fence; used the whole answer as the source")
    else:
        raise MalformedOutput(
            "no class Architecture in the answer: write one ```python block defining class Architecture(nn.Module)"
        )

    json_bodies = [body for lang, body, _ in fences if lang in ("json", "jsonc")]
    if not json_bodies:
        json_bodies = [body for lang, body, _ in fences if not lang and body.strip().startswith("{")]
    if not json_bodies:
        notes.append("no json training config in the answer; the planner's recipe applies")
        return CodeAnswer(source=source.strip("\n") + "\n", recipe={}, notes=notes)
    raw = json_bodies[-1]
    try:
        recipe = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise MalformedOutput(
            f"the json training config is not valid JSON ({exc.msg} at line {exc.lineno}); "
            "write one ```json block holding a single object"
        ) from None
    if not isinstance(recipe, dict):
        raise MalformedOutput(f"the json training config must be an object, got {type(recipe).__name__}")
    return CodeAnswer(source=source.strip("\n") + "\n", recipe=recipe, notes=notes)


# ---------------------------------------------------------------- data explorer


def report_allowed(steps_run: int) -> bool:
    """A report is accepted only after at least one code run (PROTOCOL.md)."""
    return steps_run >= 1


def parse_explorer(text: str, *, steps_run: int | None = None) -> RunCode | Report:
    """Code to run next, or the final report; `steps_run` enables the run-code-first rule."""
    code_blocks = [body for lang, body, _ in _fences(text) if lang in _PY_LANGS and body.strip()]
    code = "\n\n".join(b.strip("\n") for b in code_blocks)
    report = _first(text, "report")
    if report is None:
        loose = re.search(r"<\s*report\s*>(.*)\Z", text, re.IGNORECASE | re.DOTALL)
        report = loose.group(1).strip() if loose else None  # cut off before </report>
    if report is not None and (steps_run is None or report_allowed(steps_run)):
        if not report:
            raise MalformedOutput("the <report> is empty; write the findings inside <report>...</report>")
        return Report(text=report)
    if code:
        return RunCode(code=code + "\n")
    if report is not None:
        raise MalformedOutput("a report before any code has run is refused: run a ```python block first")
    raise MalformedOutput("no ```python block to run and no <report>: write one of the two")


# ---------------------------------------------------------------- re-ask


def reask_message(error: MalformedOutput, attempt: int, max_attempts: int) -> str:
    """The short message sent back to the model; `attempt` is the number of the answer asked for."""
    return render("shared_reask", reason=error.reason, attempt=attempt, max_attempts=max_attempts).text.strip()


# ---------------------------------------------------------------- Phases 1.5 and 2


def parse_rewrite(text: str) -> str:
    """The Modularizer's answer: the python block defining `class Architecture` (the last one)."""
    return parse_code(text).source


class PlannedSlot(msgspec.Struct, frozen=True, kw_only=True):
    """One slot as the Slot Planner writes it (alternatives are descriptions; code comes later)."""

    name: str
    description: str = ""
    input_shape: list[int]
    output_shape: list[int]
    interface: str = "single"
    residual_shape: list[int] | None = None
    kind: str = "module"
    seed_description: str = ""
    seed_code: str = ""  # module slots: the class of the seed's own choice, taken from the seed
    alternatives: list[str] = []  # descriptions of the other choices, best ideas first


class SlotPlanAnswer(msgspec.Struct, frozen=True, kw_only=True):
    scaffold_code: str
    slots: list[PlannedSlot]


_plan_decoder = msgspec.json.Decoder(SlotPlanAnswer)


def parse_slot_plan(text: str) -> SlotPlanAnswer:
    """The Slot Planner's answer: one JSON object {"scaffold_code": ..., "slots": [...]}.

    Shapes and rules are checked later (bus/space.check_space), with errors fed back the same
    way; here only the JSON itself."""
    fences = [body for lang, body, _ in _fences(text) if lang in ("json", "jsonc", "") and body.strip().startswith("{")]
    raw = fences[-1] if fences else text[text.find("{"):text.rfind("}") + 1] if "{" in text else ""
    if not raw.strip():
        raise MalformedOutput('no JSON object in the answer: write one ```json block {"scaffold_code": ..., "slots": [...]}')
    try:
        answer = _plan_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise MalformedOutput(f"the slot plan JSON is invalid: {exc}") from None
    except msgspec.DecodeError as exc:
        raise MalformedOutput(f"the slot plan is not valid JSON ({exc}); write one ```json block") from None
    if not answer.slots:
        raise MalformedOutput("the slot plan has no slots")
    return answer


def parse_slot_class(text: str) -> str:
    """The Code Executor's answer for one slot alternative: the python block that defines one class."""
    blocks = [body for lang, body, _ in _fences(text) if (lang in _PY_LANGS or not lang) and "class " in body]
    if not blocks:
        if "class " in text and not _fences(text):
            return text.strip("\n") + "\n"
        raise MalformedOutput("no class in the answer: write one ```python block defining the slot's class")
    return blocks[-1].strip("\n") + "\n"
