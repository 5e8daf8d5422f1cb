"""Static gate for untrusted model source, run before the source is ever imported.

The gate reads the AST and rejects anything that reaches past building and
running a network: imports other than torch / nn / F / init, math and a short
stdlib list; builtins that run code, open files or read namespaces; dunder
names and attributes (the usual ways out of a restricted namespace);
frame/traceback attributes; torch entry points that load, save, compile,
spawn processes or touch the device. It errs on the strict side: a model that
needs any of these is a model the search does not want.

It is the first wall only. The worker process adds an audit hook, resource
limits, a scrubbed environment and (where the OS allows) no network, so a
source that slips past the gate still cannot do much (see worker.py).
"""

from __future__ import annotations

import ast
import re

__all__ = ["MAX_SOURCE_BYTES", "check_source"]

MAX_SOURCE_BYTES = 200_000
MAX_REASONS = 20

ALLOWED_MODULES = frozenset({
    "torch", "torch.nn", "torch.nn.functional", "torch.nn.init",
    "math", "functools", "itertools", "collections", "collections.abc", "typing",
    "dataclasses", "numbers", "enum", "abc", "operator", "copy", "__future__",
})

# Builtins that run code, open files, read namespaces or wait for a person.
DENIED_BUILTINS = frozenset({
    "eval", "exec", "compile", "open", "input", "breakpoint", "globals", "locals", "vars",
    "exit", "quit", "help", "copyright", "credits", "license",
})
# Allowed only as a direct call with a literal attribute name, which is then checked.
ATTR_BUILTINS = frozenset({"getattr", "setattr", "delattr"})

ALLOWED_DUNDERS = frozenset({"__init__", "__name__", "__all__"})

# Attribute names refused on any object: file I/O, frames, string-based attribute
# access, process/environment handles and compilation.
DENIED_ATTRS = frozenset({
    "load", "save", "from_file", "fromfile", "tofile", "dump", "dumps", "loads",
    "share_memory_", "ctypes", "compile",
    "f_globals", "f_locals", "f_builtins", "f_back", "f_code",
    "tb_frame", "tb_next", "gi_frame", "gi_code", "cr_frame", "cr_code", "ag_frame", "ag_code", "co_code",
    "attrgetter", "methodcaller", "get_type_hints", "ForwardRef",
    "system", "popen", "environ", "getenv",
})
# Stdlib modules re-exported as attributes of allowed modules (torch.sys, torch.os, dataclasses.sys,
# enum.bltns, collections._sys, typing.stdlib_re ...) and the other classic ways out: refused as
# attribute names anywhere, so `torch.sys.modules` is as closed as `import sys`.
MODULE_ATTRS = frozenset({
    "sys", "_sys", "os", "posix", "builtins", "bltns", "importlib", "inspect", "platform", "glob",
    "threading", "_thread", "types", "warnings", "textwrap", "re", "stdlib_re", "contextlib", "keyword",
    "_collections_abc", "io", "subprocess", "shutil", "pathlib", "tempfile", "pickle", "marshal", "socket",
    "signal", "gc", "weakref", "linecache", "traceback", "runpy", "pkgutil", "site", "sysconfig", "codecs",
    "multiprocessing", "asyncio", "resource", "mmap", "fcntl", "pty", "atexit", "faulthandler", "tracemalloc",
    "zipimport",
})
# Private tensor/storage methods that create shared-memory files or file-backed storage.
DENIED_PRIVATE = re.compile(r"^_.*(share|file|fd)", re.IGNORECASE)

# Dotted paths refused under an imported module (matched on whole segments).
DENIED_PATHS = (
    "torch.load", "torch.save", "torch.from_file", "torch.hub", "torch.ops", "torch.classes",
    "torch.jit", "torch.utils", "torch.multiprocessing", "torch.distributed", "torch.compile",
    "torch.cuda", "torch.library", "torch.package", "torch.serialization", "torch.onnx",
    "torch.profiler", "torch.export", "torch.testing", "torch.storage", "torch.UntypedStorage",
    "torch.TypedStorage", "torch.set_num_threads", "torch.set_num_interop_threads",
    "torch.autograd.profiler",
)
ALLOWED_PRIVATE_PATHS = frozenset({"torch.nn.init._calculate_fan_in_and_fan_out"})

_DUNDER = re.compile(r"__\w+__")
_FORMAT_FIELD = re.compile(r"\{([^{}]*)\}")
_IDENT = re.compile(r"[A-Za-z_]\w*")


def check_source(source: str) -> list[str]:
    """Reasons to refuse `source` (one line each, with line numbers); [] when it passes."""
    size = len(source.encode("utf-8", errors="replace"))
    if size > MAX_SOURCE_BYTES:
        return [f"source is {size} bytes, over the {MAX_SOURCE_BYTES} byte limit"]
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        return [f"line {exc.lineno or 0}: syntax error: {exc.msg}"]
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes, absurd nesting
        return [f"source cannot be parsed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"]
    reasons = _Checker(_module_aliases(tree)).run(tree)
    if not any(isinstance(node, ast.ClassDef) and node.name == "Architecture" for node in tree.body):
        reasons.append("no class named Architecture at the top level")
    return list(dict.fromkeys(reasons))[:MAX_REASONS]


def _module_aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted module path, for names bound by imports anywhere in the source."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:  # `import torch.nn` binds `torch`
                    root = alias.name.split(".")[0]
                    aliases[root] = root
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


def _path_denied(path: str) -> bool:
    if path in ALLOWED_PRIVATE_PATHS:
        return False
    if any(path == p or path.startswith(p + ".") for p in DENIED_PATHS):
        return True
    # private parts of torch (torch._C, torch._dynamo, nn.modules._x ...)
    return path.startswith("torch.") and any(part.startswith("_") for part in path.split(".")[1:])


def _attr_problem(name: str) -> str | None:
    if _DUNDER.fullmatch(name) and name not in ALLOWED_DUNDERS:
        return f"dunder attribute {name!r}"
    if name in DENIED_ATTRS:
        return f"attribute {name!r}"
    if name in MODULE_ATTRS:
        return f"attribute {name!r} (a module outside the allowed imports)"
    if DENIED_PRIVATE.match(name):
        return f"private attribute {name!r}"
    return None


class _Checker:
    """Collects reasons over every node of the tree (iteratively: no recursion limit)."""

    def __init__(self, aliases: dict[str, str]) -> None:
        self.aliases = aliases
        self.reasons: list[str] = []
        self.checked_attr_calls: set[int] = set()  # ids of getattr-like Name nodes already judged
        self.inert: set[int] = set()  # ids of docstring-like constants, which nothing can read
        self.reported: set[int] = set()  # inner links of an attribute chain already refused

    def run(self, tree: ast.AST) -> list[str]:
        nodes = list(ast.walk(tree))
        for node in nodes:  # calls first, so their function names are known to be judged
            if isinstance(node, ast.Call):
                self._call(node)
            elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                self.inert.add(id(node.value))
        for node in nodes:
            match node:
                case ast.Import() | ast.ImportFrom():
                    self._import(node)
                case ast.Name():
                    self._name(node)
                case ast.Attribute():
                    self._attribute(node)
                case ast.Constant(value=str() as text) if id(node) not in self.inert:
                    self._string(node, text)
                case ast.alias(asname=str() as asname) if _DUNDER.fullmatch(asname):
                    self._refuse(node, f"dunder name {asname!r}")
        self.reasons.sort(key=lambda reason: int(reason[5:reason.index(":")]))  # "line N: ..."
        return self.reasons

    def _refuse(self, node: ast.AST, what: str) -> None:
        self.reasons.append(f"line {getattr(node, 'lineno', 0)}: {what} is not allowed")

    def _import(self, node: ast.Import | ast.ImportFrom) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name not in ALLOWED_MODULES:
                    self._refuse(node, f"import of {alias.name!r}")
            return
        module = node.module or ""
        if node.level or module not in ALLOWED_MODULES:
            self._refuse(node, f"import from {'.' * node.level + module!r}")
            return
        for alias in node.names:
            path = f"{module}.{alias.name}"
            if alias.name == "*":
                self._refuse(node, f"'from {module} import *'")
            elif _path_denied(path) or (module != "__future__" and _attr_problem(alias.name)):
                self._refuse(node, f"import of {path!r}")

    def _name(self, node: ast.Name) -> None:
        if _DUNDER.fullmatch(node.id) and node.id not in ALLOWED_DUNDERS:
            self._refuse(node, f"dunder name {node.id!r}")
        elif node.id in DENIED_BUILTINS:
            self._refuse(node, f"builtin {node.id!r}")
        elif node.id in ATTR_BUILTINS and id(node) not in self.checked_attr_calls:
            self._refuse(node, f"{node.id!r} other than a direct call with a literal name")
        elif node.id in self.aliases and _path_denied(self.aliases[node.id]):
            self._refuse(node, f"use of {self.aliases[node.id]!r}")

    def _attribute(self, node: ast.Attribute) -> None:
        if id(node) in self.reported:
            return
        path = self._dotted(node)
        if path and _path_denied(path):
            self._refuse(node, f"use of {path!r}")
            inner = node.value
            while isinstance(inner, ast.Attribute):  # `torch.utils.data` is one finding, not two
                self.reported.add(id(inner))
                inner = inner.value
            return
        problem = _attr_problem(node.attr)
        if problem:
            self._refuse(node, problem)

    def _dotted(self, node: ast.Attribute) -> str | None:
        """`torch.utils.x` -> 'torch.utils.x' when the chain starts at an imported module."""
        parts: list[str] = []
        current: ast.expr = node
        while isinstance(current, ast.Attribute):
            parts.append(current.attr)
            current = current.value
        if isinstance(current, ast.Name) and current.id in self.aliases:
            return ".".join([self.aliases[current.id], *reversed(parts)])
        return None

    def _call(self, node: ast.Call) -> None:
        func = node.func
        if not (isinstance(func, ast.Name) and func.id in ATTR_BUILTINS):
            return
        name = node.args[1] if len(node.args) >= 2 else None
        if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
            return  # left for _name to refuse
        self.checked_attr_calls.add(id(func))
        if name.value in MODULE_ATTRS:
            self._refuse(node, f"{func.id}() of attribute {name.value!r} (a module outside the allowed imports)")
            return
        target = node.args[0]
        if isinstance(target, ast.Name) and target.id in self.aliases:
            path = f"{self.aliases[target.id]}.{name.value}"
            if _path_denied(path):
                self._refuse(node, f"use of {path!r}")

    def _string(self, node: ast.Constant, text: str) -> None:
        """Strings that name dunders or denied attributes feed getattr, attrgetter or str.format."""
        for dunder in _DUNDER.findall(text):
            if dunder not in ALLOWED_DUNDERS and dunder != "__main__":
                self._refuse(node, f"string naming {dunder!r}")
                return
        if text in DENIED_ATTRS or DENIED_PRIVATE.match(text):
            self._refuse(node, f"string naming {text!r}")
            return
        for field in _FORMAT_FIELD.findall(text):
            for ident in _IDENT.findall(field):
                if _attr_problem(ident):
                    self._refuse(node, f"format field {field!r}")
                    return
