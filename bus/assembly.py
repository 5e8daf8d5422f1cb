"""Reading the sources of a slotted space: the scaffold and the alternatives (pure `ast`, no torch).

This module reads and reports facts; `agentnas.bus.space` judges them against
the declared slots. What a source cannot be, whatever the slots (it does not
parse, the scaffold has no `Architecture`, an alternative defines two
classes), raises `SourceError` here with a one-line message that names the
line; the caller adds where the source sits in the space.

Facts read from a scaffold:
- instantiations: `self.<name> = SLOT_<name>()` inside `Architecture.__init__`,
  the only place and form a slot class may appear in the scaffold;
- calls: every `self.<name>(...)` anywhere in `Architecture.forward` (loops,
  branches, list displays included), with the number of positional arguments;
- chains: straight-line data flow from one slot call to the next, at the same
  block level, used to check that one slot's output shape is the next slot's
  input (or residual) shape:

      x = self.a(x)          # x holds a's output
      x = self.b(x)          # chain a -> b (input); x now holds b's output
      y = self.c(z, x)       # chain b -> c (residual)
      x = self.d(self.e(x))  # chains b -> e (input) and e -> d (input)

  Any other binding of the variable in between (assignment, augmented
  assignment, loop target, walrus, `with ... as`, `del`) breaks the chain; a
  compound statement (if / for / while / with / try / match) is read as its
  own blocks and forgets every chain around it. That is deliberately
  conservative: a chain that is reported is certain, some real chains are
  not seen.
"""

from __future__ import annotations

import ast
import io
import textwrap
import tokenize
from dataclasses import dataclass, field

__all__ = [
    "HEADER",
    "ScaffoldFacts",
    "SlotCall",
    "Chain",
    "SourceError",
    "check_alternative_source",
    "clean_source",
    "read_scaffold",
    "rename_class",
]

# The fixed import header of every assembled model (the static gate allows exactly these).
HEADER = "import math\nimport torch\nfrom torch import nn\nimport torch.nn.functional as F\n"

SLOT_PREFIX = "SLOT_"


class SourceError(ValueError):
    """A source that cannot be part of a space, whatever its slots; one line."""


@dataclass(frozen=True)
class SlotCall:
    slot: str
    n_args: int  # positional arguments
    has_keywords: bool  # keyword or starred arguments (not allowed)
    line: int


@dataclass(frozen=True)
class Chain:
    producer: str  # the slot whose output flows ...
    consumer: str  # ... into this slot's call
    position: int  # 0: as its input, 1: as its residual
    line: int


@dataclass(frozen=True)
class ScaffoldFacts:
    instantiated: dict[str, int] = field(default_factory=dict)  # slot name -> line
    calls: tuple[SlotCall, ...] = ()
    chains: tuple[Chain, ...] = ()


def clean_source(source: str) -> str:
    """The form in which a source is checked and assembled: dedented, no blank lines around it."""
    return textwrap.dedent(source).strip("\n").rstrip() + "\n"


def _parse(source: str) -> ast.Module:
    try:
        tree = ast.parse(clean_source(source))
    except SyntaxError as exc:
        raise SourceError(f"does not parse: line {exc.lineno}: {exc.msg}") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            raise SourceError(f"line {node.lineno}: 'from __future__ import' cannot be used (the source is assembled mid-file)")
    return tree


def _accepts(fn: ast.FunctionDef, n: int) -> bool:
    """Can `fn` (a method, `self` first) be called with n positional arguments besides self?"""
    params = fn.args.posonlyargs + fn.args.args
    if not params:
        return fn.args.vararg is not None
    required = len(params) - 1 - len(fn.args.defaults)
    kw_required = [a for a, d in zip(fn.args.kwonlyargs, fn.args.kw_defaults) if d is None]
    if kw_required:
        return False
    return required <= n and (fn.args.vararg is not None or n <= len(params) - 1)


def _methods(cls: ast.ClassDef) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


# ---------------------------------------------------------------- alternatives


def check_alternative_source(source: str, class_name: str, n_inputs: int) -> None:
    """An alternative is imports plus exactly one top-level class `class_name`.

    The class builds with no arguments (`__init__(self)`, extra parameters only
    with defaults) and, when it defines `forward`, takes `n_inputs` tensors
    (1: x; 2: x, residual). Helpers go inside the class: a top-level helper of
    one alternative would collide with another's in the assembled file.
    """
    tree = _parse(source)
    classes = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            classes.append(node)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            continue  # a docstring
        else:
            raise SourceError(
                f"line {node.lineno}: top-level {type(node).__name__} not allowed; "
                "an alternative holds imports and one class (put helpers inside it)"
            )
    if not classes:
        raise SourceError(f"defines no class (expected class {class_name})")
    if len(classes) > 1:
        names = ", ".join(c.name for c in classes)
        raise SourceError(
            f"defines {len(classes)} top-level classes ({names}); expected only class {class_name} (put helpers inside it)"
        )
    cls = classes[0]
    if cls.name != class_name:
        raise SourceError(f"defines class {cls.name}, expected {class_name}")
    methods = _methods(cls)
    init = methods.get("__init__")
    if init is not None and not _accepts(init, 0):
        raise SourceError(f"line {init.lineno}: {class_name}.__init__ must take no arguments besides self")
    forward = methods.get("forward")
    if forward is not None and not _accepts(forward, n_inputs):
        expected = "forward(self, x)" if n_inputs == 1 else "forward(self, x, residual)"
        raise SourceError(f"line {forward.lineno}: {class_name}.forward must accept {n_inputs} tensor(s): {expected}")


def rename_class(source: str, new_name: str) -> str:
    """Rename the single top-level class (or, among several, the single nn.Module one) to `new_name`.

    Every use of the old name as a Python name is renamed too (`super(Old, self)`,
    a nested reference), found with `tokenize`, so strings and comments are kept
    as written. The source is dedented first; formatting is otherwise untouched.
    """
    text = clean_source(source)
    tree = _parse(text)
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    if len(classes) > 1:
        classes = [c for c in classes if any(_is_module_base(b) for b in c.bases)]
    if len(classes) != 1:
        raise SourceError(f"cannot tell which class to rename to {new_name}: {len(classes)} candidate top-level classes")
    old = classes[0].name
    if old == new_name:
        return text
    if not new_name.isidentifier():
        raise SourceError(f"{new_name!r} is not a Python identifier")
    lines = text.splitlines(keepends=True)
    spots = [
        tok.start
        for tok in tokenize.generate_tokens(io.StringIO(text).readline)
        if tok.type == tokenize.NAME and tok.string == old
    ]
    for row, col in reversed(spots):
        line = lines[row - 1]
        lines[row - 1] = line[:col] + new_name + line[col + len(old):]
    return "".join(lines)


def _is_module_base(base: ast.expr) -> bool:
    return (isinstance(base, ast.Name) and base.id == "Module") or (isinstance(base, ast.Attribute) and base.attr == "Module")


# ---------------------------------------------------------------- scaffold


def read_scaffold(source: str) -> ScaffoldFacts:
    """The facts about slots in a scaffold (see the module docstring); SourceError for a malformed one."""
    tree = _parse(source)
    _refuse_slot_definitions(tree)
    archs = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Architecture"]
    if not archs:
        raise SourceError("does not define class Architecture at top level")
    arch = archs[-1]
    methods = _methods(arch)
    init, forward = methods.get("__init__"), methods.get("forward")
    if init is None or not _accepts(init, 0):
        raise SourceError("Architecture must define __init__(self) with no other arguments")
    if forward is None or not _accepts(forward, 1):
        raise SourceError("Architecture must define forward(self, x)")
    instantiated = _instantiations(tree, init)
    slot_names = set(instantiated)
    calls = tuple(
        SlotCall(call.func.attr, len(call.args), _irregular_arguments(call), call.lineno)
        for call in ast.walk(forward)
        if _slot_call(call, slot_names)
    )
    chains: list[Chain] = []
    _read_block(forward.body, slot_names, chains)
    return ScaffoldFacts(instantiated=instantiated, calls=calls, chains=tuple(chains))


def _refuse_slot_definitions(tree: ast.Module) -> None:
    for node in ast.walk(tree):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith(SLOT_PREFIX):
            raise SourceError(
                f"line {node.lineno}: defines {node.name}; slot classes are not written in the scaffold (they are inserted before it)"
            )
        for target in _assign_targets(node):
            for name in ast.walk(target):
                if isinstance(name, ast.Name) and name.id.startswith(SLOT_PREFIX):
                    raise SourceError(f"line {node.lineno}: assigns {name.id}; slot classes are bound at assembly, not in the scaffold")


def _instantiations(tree: ast.Module, init: ast.FunctionDef) -> dict[str, int]:
    """slot name -> line of `self.<name> = SLOT_<name>()`; any other use of a SLOT_ name is an error."""
    allowed: dict[int, str] = {}  # id(Name node of SLOT_x) -> slot name, for the well-formed statements
    found: dict[str, int] = {}
    for node in ast.walk(init):
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name)):
            continue
        cls = node.value.func.id
        if not cls.startswith(SLOT_PREFIX):
            continue
        name = cls[len(SLOT_PREFIX):]
        target = node.targets[0] if len(node.targets) == 1 else None
        if not (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self"):
            raise SourceError(f"line {node.lineno}: {cls}() must be assigned to self.{name}")
        if target.attr != name:
            raise SourceError(f"line {node.lineno}: {cls}() must be assigned to self.{name}, not self.{target.attr}")
        if node.value.args or node.value.keywords:
            raise SourceError(f"line {node.lineno}: {cls}() is instantiated with arguments; slots take none")
        if name in found:
            raise SourceError(f"line {node.lineno}: {cls} is instantiated twice (first at line {found[name]})")
        found[name] = node.lineno
        allowed[id(node.value.func)] = name
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id.startswith(SLOT_PREFIX) and id(node) not in allowed:
            raise SourceError(
                f"line {node.lineno}: {node.id} used outside 'self.<name> = SLOT_<name>()' in Architecture.__init__"
            )
    return found


def _assign_targets(node: ast.AST) -> list[ast.expr]:
    if isinstance(node, ast.Assign):
        return node.targets
    if isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        return [node.target]
    return []


def _irregular_arguments(call: ast.Call) -> bool:
    """Keyword or starred arguments: a slot is called with plain positional tensors only."""
    return bool(call.keywords) or any(isinstance(a, ast.Starred) for a in call.args)


def _slot_call(node: ast.AST, slot_names: set[str]) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "self"
        and node.func.attr in slot_names
    )


_COMPOUND = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith, ast.Try, ast.Match,
             ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
if hasattr(ast, "TryStar"):  # Python 3.11+
    _COMPOUND = _COMPOUND + (ast.TryStar,)


def _sub_blocks(node: ast.stmt) -> list[list[ast.stmt]]:
    blocks = [getattr(node, name) for name in ("body", "orelse", "finalbody") if isinstance(getattr(node, name, None), list)]
    blocks += [h.body for h in getattr(node, "handlers", [])]
    blocks += [c.body for c in getattr(node, "cases", [])]
    return blocks


def _bound_names(stmt: ast.stmt) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(stmt):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, ast.NamedExpr):
            names.add(node.target.id)
    return names


def _read_block(stmts: list[ast.stmt], slot_names: set[str], chains: list[Chain]) -> None:
    holds: dict[str, str] = {}  # variable -> the slot whose output it holds
    for stmt in stmts:
        if isinstance(stmt, _COMPOUND):
            for block in _sub_blocks(stmt):
                _read_block(block, slot_names, chains)
            holds.clear()
            continue
        for call in ast.walk(stmt):
            if not _slot_call(call, slot_names):
                continue
            for position, arg in enumerate(call.args[:2]):
                if isinstance(arg, ast.Name) and arg.id in holds:
                    chains.append(Chain(holds[arg.id], call.func.attr, position, call.lineno))
                elif _slot_call(arg, slot_names):
                    chains.append(Chain(arg.func.attr, call.func.attr, position, call.lineno))
        for name in _bound_names(stmt):
            holds.pop(name, None)
        value = stmt.value if isinstance(stmt, (ast.Assign, ast.AnnAssign)) else None
        targets = _assign_targets(stmt)
        if value is not None and _slot_call(value, slot_names) and len(targets) == 1 and isinstance(targets[0], ast.Name):
            holds[targets[0].id] = value.func.attr
