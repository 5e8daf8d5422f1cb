"""The slotted-architecture format: a search space as pure data and text (no torch).

A space is a scaffold (Python source of `class Architecture(nn.Module)`) whose
parts are named slots, each with 1-8 interchangeable implementations
("alternatives"), plus a virtual learning-rate slot (multipliers of the seed
recipe's lr). A configuration picks one alternative per slot and one
multiplier; `assemble` turns it into one complete model source that goes
through the static gate and the trainer like any other model.
docs/SPACES.md documents the format for people writing a space by hand.

Who uses it: the Slot Planner builds and checks spaces (`check_space`,
`with_defaults`, `rename_alternative_class`); the Evolver proposes
`Configuration`s and names them (`canonical_key`, `config_id`); the trainer
side assembles them. The Structs live in events and files forever: fields
added later get defaults, unknown fields are not forbidden, and
`format` says which reading rules apply.

Reading the sources (ast only) is in `agentnas.bus.assembly`; this module
judges what it reads against the declared slots.
"""

from __future__ import annotations

import hashlib
import json
import keyword
import math
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal

import msgspec

from agentnas.bus.assembly import (
    HEADER,
    SourceError,
    check_alternative_source,
    clean_source,
    read_scaffold,
    rename_class,
)

__all__ = [
    "DEFAULT_LR",
    "FORMAT",
    "Alternative",
    "Configuration",
    "Provenance",
    "Slot",
    "SlottedSpace",
    "SpaceError",
    "assemble",
    "canonical_key",
    "check_space",
    "config_id",
    "config_recipe",
    "configuration_from_key",
    "decode_space",
    "describe_choices",
    "encode_space",
    "load_space",
    "mutable_slots",
    "offered_defaults",
    "rename_alternative_class",
    "save_space",
    "seed_configuration",
    "space_id",
    "space_json_schema",
    "space_size",
    "validate_configuration",
    "with_defaults",
]

FORMAT = 1  # the reading rules this module implements; a file with another `format` is refused

# The lr a recipe without one trains with: trainer_daemon/recipe.py, `Recipe.lr` (1e-3).
# Copied, not imported: bus sits below trainer_daemon.
DEFAULT_LR = 1e-3


class SpaceError(ValueError):
    """A space, file or configuration that cannot be used; the message is one line naming where."""


# ---------------------------------------------------------------- the format


class Alternative(msgspec.Struct, frozen=True, kw_only=True):
    description: str
    source: str  # one class SLOT_<slot>_<index>, plus imports if it wants them
    role: Literal["seed", "identity", "zero", "candidate"] = "candidate"


class Slot(msgspec.Struct, frozen=True, kw_only=True):
    name: str  # a Python identifier; the scaffold holds it as self.<name>
    class_name: str  # always SLOT_<name>
    description: str = ""
    input_shape: tuple[int, ...]  # without the batch dimension
    output_shape: tuple[int, ...]
    interface: Literal["single", "dual"] = "single"  # forward(x) | forward(x, residual)
    residual_shape: tuple[int, ...] | None = None  # required iff dual
    kind: Literal["module", "glue"] = "module"  # glue: alternative 0 is Identity
    seed_description: str = ""
    alternatives: tuple[Alternative, ...]  # index 0 is the seed's own choice


class Provenance(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str = ""
    event_ids: tuple[str, ...] = ()
    created_by: str = ""  # "slot_planner", "builtin:wrn16_4", "hand-written", ...
    note: str = ""


class SlottedSpace(msgspec.Struct, frozen=True, kw_only=True):
    format: int = FORMAT
    task: str = ""
    scaffold_source: str
    slots: tuple[Slot, ...]
    lr_multipliers: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    seed_recipe: dict[str, Any] = {}  # the seed's training recipe (whitelisted keys: lr, epochs, ...)
    seed_source: str = ""  # the seed network's own code, for the reproduction gate
    seed_params: int | None = None
    provenance: Provenance = Provenance()


class Configuration(msgspec.Struct, frozen=True, kw_only=True):
    choices: tuple[int, ...]  # one alternative index per slot, in declaration order
    lr_index: int  # index into the space's lr_multipliers


# ---------------------------------------------------------------- files and JSON

_PATH_IN_ERROR = re.compile(r"\s*-\s*at `(\$[^`]*)`")
_ENUM_ERROR = re.compile(r"^Invalid enum value (.*)$")


def _literal_fields() -> dict[str, tuple[str, ...]]:
    """Field name -> allowed values, for every Literal field of the format (for readable errors)."""
    found = {}
    for cls in (Alternative, Slot, Provenance, SlottedSpace):
        for name, hint in typing.get_type_hints(cls).items():
            if typing.get_origin(hint) is Literal:
                found[name] = typing.get_args(hint)
    return found


def _explain(exc: msgspec.ValidationError, source: str) -> SpaceError:
    text = str(exc)
    match = _PATH_IN_ERROR.search(text)
    where = match.group(1) if match else "$"
    text = _PATH_IN_ERROR.sub("", text).strip()
    enum = _ENUM_ERROR.match(text)
    allowed = _literal_fields().get(where.rsplit(".", 1)[-1])
    if enum and allowed:
        got = enum.group(1)
        if len(got) >= 2 and got[0] == got[-1] == "'":
            got = f'"{got[1:-1]}"'
        text = f"Expected {' | '.join(json.dumps(a) for a in allowed)}, got {got}"
    return SpaceError(f"{source}: {where}: {text}")


def decode_space(data: bytes | str, source: str = "space") -> SlottedSpace:
    """JSON -> SlottedSpace; SpaceError `<source>: <json path>: <problem>` on one line."""
    try:
        space = msgspec.json.decode(data, type=SlottedSpace)
    except msgspec.ValidationError as exc:
        raise _explain(exc, source) from None
    except msgspec.DecodeError as exc:
        raise SpaceError(f"{source}: not valid JSON ({exc})") from None
    if space.format != FORMAT:
        raise SpaceError(f"{source}: $.format: this version reads format {FORMAT}, got {space.format}")
    return space


def load_space(path: str | Path) -> SlottedSpace:
    """Read and decode a space file (no static checks: see `check_space`)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SpaceError(f"{path}: cannot read the space file ({exc.strerror or exc})") from None
    return decode_space(data, str(path))


def encode_space(space: SlottedSpace) -> bytes:
    """Pretty JSON, keys sorted, every field written: the same space always gives the same bytes."""
    return msgspec.json.format(msgspec.json.encode(space, order="sorted"), indent=2) + b"\n"


def save_space(space: SlottedSpace, path: str | Path) -> None:
    """Write `encode_space(space)` to path, replacing it atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(encode_space(space))
    os.replace(tmp, path)


def space_json_schema() -> dict[str, Any]:
    """The JSON Schema of a space file (`agentnas space schema`)."""
    return msgspec.json.schema(SlottedSpace)


def _without_defaults(value: Any) -> Any:
    """Plain data with every Struct field that equals its default left out (recursively)."""
    if isinstance(value, msgspec.Struct):
        out = {}
        for f in msgspec.structs.fields(value):
            item = getattr(value, f.name)
            if f.default is not msgspec.NODEFAULT and item == f.default:
                continue
            if f.default_factory is not msgspec.NODEFAULT and item == f.default_factory():
                continue
            out[f.encode_name] = _without_defaults(item)
        return out
    if isinstance(value, (list, tuple)):
        return [_without_defaults(v) for v in value]
    if isinstance(value, dict):
        return {k: _without_defaults(v) for k, v in value.items()}
    return value


def space_id(space: SlottedSpace) -> str:
    """A short id of the space's content: "spc_" + 12 hex digits.

    Provenance is left out (the same space planned twice is the same space),
    and so are fields at their default, so a field added to the format later
    does not change the id of an existing space.
    """
    plain = _without_defaults(space)
    plain.pop("provenance", None)
    digest = hashlib.sha256(msgspec.json.encode(plain, order="sorted")).hexdigest()
    return f"spc_{digest[:12]}"


# ---------------------------------------------------------------- configurations


def space_size(space: SlottedSpace) -> int:
    """Exact number of configurations: the alternatives of every slot times the lr multipliers."""
    return math.prod(len(slot.alternatives) for slot in space.slots) * len(space.lr_multipliers)


def mutable_slots(space: SlottedSpace) -> tuple[int, ...]:
    """Indices of the slots a search may change (two or more alternatives); the others stay at 0."""
    return tuple(i for i, slot in enumerate(space.slots) if len(slot.alternatives) >= 2)


def seed_configuration(space: SlottedSpace) -> Configuration:
    """Every slot at its seed choice (0), lr multiplier 1.0."""
    for i, multiplier in enumerate(space.lr_multipliers):
        if multiplier == 1.0:
            return Configuration(choices=(0,) * len(space.slots), lr_index=i)
    raise SpaceError(f"$.lr_multipliers: {list(space.lr_multipliers)} has no 1.0, so there is no seed configuration")


def validate_configuration(space: SlottedSpace, config: Configuration) -> None:
    """SpaceError (one line) unless config has one in-range choice per slot and an in-range lr index."""
    if len(config.choices) != len(space.slots):
        raise SpaceError(f"configuration has {len(config.choices)} choices, the space has {len(space.slots)} slots")
    for slot, k in zip(space.slots, config.choices):
        if not 0 <= k < len(slot.alternatives):
            raise SpaceError(
                f"configuration: slot '{slot.name}': choice {k} out of range ({len(slot.alternatives)} alternatives)"
            )
    if not 0 <= config.lr_index < len(space.lr_multipliers):
        raise SpaceError(f"configuration: lr_index {config.lr_index} out of range ({len(space.lr_multipliers)} multipliers)")


def _multiplier_text(value: float) -> str:
    return repr(float(value))  # shortest round-trip form: "1.0", "0.25", the same in every process


def canonical_key(space: SlottedSpace, config: Configuration) -> str:
    """`"stem=0,stage1=2,...|lr=1.0"`: slot names and the lr multiplier's value, declaration order.

    Equal keys mean the same network and recipe in this space, whoever proposed
    it and in whatever order; the text depends only on names, indices and the
    multiplier's value, so it is identical across processes and versions.
    """
    validate_configuration(space, config)
    choices = ",".join(f"{slot.name}={k}" for slot, k in zip(space.slots, config.choices))
    return f"{choices}|lr={_multiplier_text(space.lr_multipliers[config.lr_index])}"


def config_id(space: SlottedSpace, config: Configuration) -> str:
    """"cfg_" + the first 12 hex digits of sha256(canonical key): only [A-Za-z0-9_], for eval and arch ids."""
    return "cfg_" + hashlib.sha256(canonical_key(space, config).encode()).hexdigest()[:12]


def configuration_from_key(space: SlottedSpace, key: str) -> Configuration:
    """The configuration a canonical key names; slots may be listed in any order, all must be there."""
    choices_text, sep, lr_text = key.partition("|lr=")
    if not sep:
        raise SpaceError(f"configuration key {key!r}: expected 'name=index,...|lr=multiplier'")
    given: dict[str, int] = {}
    for part in filter(None, choices_text.split(",")):
        name, _, index = part.partition("=")
        if name in given or not index.strip().lstrip("-").isdigit():
            raise SpaceError(f"configuration key: bad or repeated entry {part!r}")
        given[name.strip()] = int(index)
    names = [slot.name for slot in space.slots]
    if set(given) != set(names):
        missing, unknown = sorted(set(names) - set(given)), sorted(set(given) - set(names))
        raise SpaceError(f"configuration key: slots missing {missing}, unknown {unknown}")
    try:
        lr_index = [float(m) for m in space.lr_multipliers].index(float(lr_text))
    except ValueError:
        raise SpaceError(f"configuration key: lr multiplier {lr_text!r} is not one of {list(space.lr_multipliers)}") from None
    config = Configuration(choices=tuple(given[name] for name in names), lr_index=lr_index)
    validate_configuration(space, config)
    return config


def _base_lr(recipe: dict[str, Any]) -> float:
    raw = recipe.get("lr", recipe.get("learning_rate", DEFAULT_LR))
    try:
        lr = float(raw)
    except (TypeError, ValueError):
        raise SpaceError(f"$.seed_recipe.lr: expected a number, got {raw!r}") from None
    if isinstance(raw, bool) or not (math.isfinite(lr) and lr > 0):
        raise SpaceError(f"$.seed_recipe.lr: must be a finite number > 0, got {raw!r}")
    return lr


def config_recipe(space: SlottedSpace, config: Configuration) -> dict[str, Any]:
    """The seed recipe with lr = seed lr (or DEFAULT_LR) x the configuration's multiplier."""
    validate_configuration(space, config)
    recipe = dict(space.seed_recipe)
    base = _base_lr(recipe)
    recipe.pop("learning_rate", None)  # an alias recipe.py also reads; one lr key only
    recipe["lr"] = base * space.lr_multipliers[config.lr_index]
    return recipe


def describe_choices(space: SlottedSpace, config: Configuration) -> list[tuple[str, str]]:
    """(slot name, chosen alternative's description) for every slot."""
    validate_configuration(space, config)
    return [(slot.name, slot.alternatives[k].description) for slot, k in zip(space.slots, config.choices)]


def assemble(space: SlottedSpace, config: Configuration) -> str:
    """One complete model source: header, the chosen classes, one alias per slot, the scaffold.

    Only the chosen alternatives are included. The lr is not part of the source
    (see `config_recipe`), so configurations that differ only in lr assemble to
    the same text.
    """
    validate_configuration(space, config)
    parts = [HEADER]
    for slot, k in zip(space.slots, config.choices):
        parts.append(f"# slot {slot.name}: alternative {k}\n" + clean_source(slot.alternatives[k].source))
    parts.append("".join(f"SLOT_{slot.name} = SLOT_{slot.name}_{k}\n" for slot, k in zip(space.slots, config.choices)))
    parts.append(clean_source(space.scaffold_source))
    return "\n\n".join(parts)


# ---------------------------------------------------------------- Identity and Zero


def _default_alternative(slot: Slot, role: str, index: int) -> Alternative | None:
    """The generated Identity or Zero alternative for this slot at `index`, or None if shapes forbid it."""
    name = f"SLOT_{slot.name}_{index}"
    args = "x" if slot.interface == "single" else "x, residual"
    if role == "identity":
        if slot.input_shape != slot.output_shape:
            return None
        body, doc = "return x", "Identity: returns its input unchanged."
        description = "Identity (the input passes through unchanged)"
    elif slot.interface == "dual" and slot.residual_shape == slot.output_shape:
        body, doc = "return residual", "Zero: this branch adds nothing; the residual passes through."
        description = "Zero (the branch is switched off; the residual passes through)"
    else:
        dims = "".join(f", {d}" for d in slot.output_shape)
        body, doc = f"return x.new_zeros((x.shape[0]{dims}))", "Zero: outputs zeros of the output shape."
        description = "Zero (outputs zeros)"
    source = f'class {name}(nn.Module):\n    """{doc}"""\n\n    def forward(self, {args}):\n        {body}\n'
    return Alternative(description=description, source=source, role=role)  # type: ignore[arg-type]


def offered_defaults(slot: Slot) -> list[Alternative]:
    """Identity (where input and output shapes match) and Zero, numbered from the next free index."""
    offered: list[Alternative] = []
    for role in ("identity", "zero"):
        alternative = _default_alternative(slot, role, len(slot.alternatives) + len(offered))
        if alternative is not None:
            offered.append(alternative)
    return offered


def with_defaults(slot: Slot, *, max_alternatives: int = 8) -> Slot:
    """The slot with Identity and Zero appended where it has none of that role, shapes allow, and the cap leaves room."""
    alternatives = list(slot.alternatives)
    for role in ("identity", "zero"):
        if len(alternatives) >= max_alternatives or any(a.role == role for a in alternatives):
            continue
        alternative = _default_alternative(slot, role, len(alternatives))
        if alternative is not None:
            alternatives.append(alternative)
    return msgspec.structs.replace(slot, alternatives=tuple(alternatives))


def rename_alternative_class(source: str, new_name: str) -> str:
    """Rename an alternative's single top-level (nn.Module) class and its uses; SpaceError if ambiguous.

    The Slot Planner normalises what an LLM wrote (`class SepConv(nn.Module)`)
    to the name the space stores (`SLOT_stage2_3`).
    """
    try:
        return rename_class(source, new_name)
    except SourceError as exc:
        raise SpaceError(str(exc)) from None


# ---------------------------------------------------------------- static checks


def check_space(
    space: SlottedSpace, *, max_slots: int = 20, max_alternatives: int = 8, source: str = ""
) -> tuple[SlottedSpace, list[str]]:
    """Enforce the caps and check the space without running it.

    Returns the capped space and one note per trim: slots beyond `max_slots`
    (declaration order) are frozen to their seed choice (they stay in the
    scaffold), alternatives beyond `max_alternatives` are dropped. Raises
    SpaceError, one line naming the slot, the JSON path or the scaffold line,
    for anything that would not assemble into a consistent model. `source`
    (a file name) prefixes the message when given.
    """
    if max_alternatives < 1 or max_slots < 0:
        raise ValueError("max_alternatives must be >= 1 and max_slots >= 0")
    try:
        _check_top_level(space)
        for i, slot in enumerate(space.slots):
            _check_slot_fields(space, i, slot)
        capped, notes = _apply_caps(space, max_slots, max_alternatives)
        for i, slot in enumerate(capped.slots):
            _check_alternative_sources(i, slot)
        _check_scaffold(capped)
    except SpaceError as exc:
        raise SpaceError(f"{source}: {exc}" if source else str(exc)) from None
    return capped, notes


def _where(i: int, slot: Slot) -> str:
    return f"slot '{slot.name}' ($.slots[{i}])"


def _check_top_level(space: SlottedSpace) -> None:
    if space.format != FORMAT:
        raise SpaceError(f"$.format: this version reads format {FORMAT}, got {space.format}")
    if not space.slots:
        raise SpaceError("$.slots: a space needs at least one slot")
    multipliers = space.lr_multipliers
    if not multipliers or any(not (math.isfinite(m) and m > 0) for m in multipliers):
        raise SpaceError(f"$.lr_multipliers: must be finite numbers > 0, got {list(multipliers)}")
    if len(set(multipliers)) != len(multipliers):
        raise SpaceError(f"$.lr_multipliers: repeated values in {list(multipliers)}")
    seed_configuration(space)  # needs 1.0 among the multipliers
    _base_lr(space.seed_recipe)
    seen: dict[str, int] = {}
    for i, slot in enumerate(space.slots):
        if slot.name in seen:
            raise SpaceError(f"$.slots[{i}].name: duplicate slot name '{slot.name}' (also $.slots[{seen[slot.name]}])")
        seen[slot.name] = i


def _check_slot_fields(space: SlottedSpace, i: int, slot: Slot) -> None:
    where = _where(i, slot)
    if not slot.name.isidentifier() or keyword.iskeyword(slot.name):
        raise SpaceError(f"$.slots[{i}].name: {slot.name!r} is not a Python identifier")
    if slot.class_name != f"SLOT_{slot.name}":
        raise SpaceError(f"{where}: class_name must be 'SLOT_{slot.name}', got {slot.class_name!r}")
    if slot.interface == "dual" and slot.residual_shape is None:
        raise SpaceError(f"{where}: a dual-interface slot needs residual_shape")
    if slot.interface == "single" and slot.residual_shape is not None:
        raise SpaceError(f"{where}: residual_shape is given but the interface is single (use interface 'dual')")
    for field in ("input_shape", "output_shape", "residual_shape"):
        shape = getattr(slot, field)
        if shape is not None and any(d < 1 for d in shape):
            raise SpaceError(f"{where}: {field} {list(shape)} has a dimension < 1")
    if not slot.alternatives:
        raise SpaceError(f"{where}: no alternatives (the seed's own choice is alternative 0)")
    if slot.kind == "glue":
        if slot.alternatives[0].role != "identity":
            role = slot.alternatives[0].role
            raise SpaceError(f"{where}: a glue slot's alternative 0 must be its Identity (role 'identity'), got role {role!r}")
        if slot.input_shape != slot.output_shape:
            raise SpaceError(
                f"{where}: a glue slot keeps its shape, but input_shape {list(slot.input_shape)} "
                f"!= output_shape {list(slot.output_shape)}"
            )
    for k, alternative in enumerate(slot.alternatives[1:], start=1):
        if alternative.role == "seed":
            raise SpaceError(f"{where}: alternative {k} has role 'seed'; the seed's choice is alternative 0")


def _apply_caps(space: SlottedSpace, max_slots: int, max_alternatives: int) -> tuple[SlottedSpace, list[str]]:
    notes: list[str] = []
    slots = []
    for i, slot in enumerate(space.slots):
        n = len(slot.alternatives)
        if i >= max_slots and n > 1:
            notes.append(
                f"slot '{slot.name}' beyond the {max_slots}-slot cap: frozen to its seed choice ({n - 1} alternatives dropped)"
            )
            slot = msgspec.structs.replace(slot, alternatives=slot.alternatives[:1])
        elif n > max_alternatives:
            notes.append(f"slot '{slot.name}': {n} alternatives, kept the first {max_alternatives}")
            slot = msgspec.structs.replace(slot, alternatives=slot.alternatives[:max_alternatives])
        slots.append(slot)
    return msgspec.structs.replace(space, slots=tuple(slots)), notes


def _check_alternative_sources(i: int, slot: Slot) -> None:
    n_inputs = 1 if slot.interface == "single" else 2
    for k, alternative in enumerate(slot.alternatives):
        try:
            check_alternative_source(alternative.source, f"SLOT_{slot.name}_{k}", n_inputs)
        except SourceError as exc:
            raise SpaceError(f"slot '{slot.name}' alternative {k} ($.slots[{i}].alternatives[{k}].source): {exc}") from None


def _check_scaffold(space: SlottedSpace) -> None:
    try:
        facts = read_scaffold(space.scaffold_source)
    except SourceError as exc:
        raise SpaceError(f"scaffold ($.scaffold_source): {exc}") from None
    slots = {slot.name: slot for slot in space.slots}
    for name, line in facts.instantiated.items():
        if name not in slots:
            raise SpaceError(f"scaffold line {line}: SLOT_{name}() is instantiated but no slot '{name}' is declared")
    called = {call.slot for call in facts.calls}
    for i, slot in enumerate(space.slots):
        if slot.name not in facts.instantiated:
            raise SpaceError(
                f"{_where(i, slot)}: never instantiated in the scaffold "
                f"(expected self.{slot.name} = SLOT_{slot.name}() in Architecture.__init__)"
            )
        if slot.name not in called:
            raise SpaceError(f"{_where(i, slot)}: instantiated but never called in Architecture.forward")
    for call in facts.calls:
        slot = slots[call.slot]
        expected = 1 if slot.interface == "single" else 2
        if call.has_keywords or call.n_args != expected:
            form = f"self.{slot.name}(x)" if expected == 1 else f"self.{slot.name}(x, residual)"
            got = "keyword or starred arguments" if call.has_keywords else f"{call.n_args} argument(s)"
            raise SpaceError(
                f"scaffold line {call.line}: slot '{slot.name}' is {slot.interface}-interface, called as {form}; got {got}"
            )
    for chain in facts.chains:
        producer, consumer = slots[chain.producer], slots[chain.consumer]
        wanted = consumer.input_shape if chain.position == 0 else consumer.residual_shape
        if wanted is not None and producer.output_shape != wanted:
            what = "input" if chain.position == 0 else "residual"
            raise SpaceError(
                f"scaffold line {chain.line}: slot '{producer.name}' outputs {list(producer.output_shape)} "
                f"but slot '{consumer.name}' takes {what} {list(wanted)}"
            )
