"""`agentnas space ...`: read, check and write slotted spaces (docs/SPACES.md).

A space file that cannot be used (not JSON, a field of the wrong type, a rule
of the format broken) and an unknown task end with one line on stderr naming
the file and JSON path, and exit status 2, like every user error of the CLI.
Registered as a sub-app of `agentnas.ops.cli`; it does not import that module
(nothing imports the CLI), so it writes that one line itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.console import Console
from rich.table import Column, Table

from agentnas.bus.space import (
    Configuration,
    SlottedSpace,
    SpaceError,
    assemble,
    check_space,
    load_space,
    save_space,
    seed_configuration,
    space_id,
    space_json_schema,
    space_size,
)

space_app = typer.Typer(help="Slotted search spaces: print the schema, show, validate, write a built-in one.",
                        no_args_is_help=True)
console = Console()

SpaceFile = Annotated[Path, typer.Argument(
    help="A space JSON file (docs/SPACES.md), or the id of a run whose Phase 2 made one.")]
TaskOption = Annotated[str, typer.Option(help="Built-in task name or task TOML file (see `agentnas tasks`).")]


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """A bad space or task: one line on stderr, exit 2 (what `agentnas.ops.cli.main` does for user errors)."""
    from agentnas.trainer_daemon.tasks import TaskError

    try:
        yield
    except (SpaceError, TaskError) as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _space_file(ctx: typer.Context, file: Path) -> Path:
    """A file as given, or the space a run left in <home>/runs/<run>/space.json."""
    home = getattr(ctx.obj, "home", None) if ctx.obj is not None else None
    if not file.exists() and home is not None and (home / "runs" / str(file) / "space.json").is_file():
        return home / "runs" / str(file) / "space.json"
    return file


def _load_checked(file: Path) -> tuple[SlottedSpace, list[str]]:
    space = load_space(file)
    return check_space(space, source=str(file))


def _task_spec(ref: str) -> Any:
    """A task's spec (shapes, loss) without generating or reading its data."""
    from agentnas.trainer_daemon.tasks import list_tasks, load_task

    for spec in list_tasks():
        if spec.name == ref:
            return spec
    return load_task(ref).spec


def _shape(shape: tuple[int, ...] | None) -> str:
    return "x".join(str(d) for d in shape) if shape else "-"


# ---------------------------------------------------------------- schema, show


@space_app.command("schema")
def schema() -> None:
    """Print the JSON Schema of a space file."""
    sys.stdout.write(json.dumps(space_json_schema(), indent=2) + "\n")


@space_app.command("show")
def show(ctx: typer.Context, file: SpaceFile) -> None:
    """Show a space: slots, kinds, shapes, alternatives (the seed's marked *), size.

    A dual-interface slot says so under its kind and lists its residual shape.
    """
    file = _space_file(ctx, file)
    with _user_errors():
        space = load_space(file)
        sizes = " x ".join(str(len(slot.alternatives)) for slot in space.slots)
        console.print(f"[bold]{space_id(space)}[/bold]  {file}", highlight=False)
        console.print(f"task: {space.task or '-'}   made by: {space.provenance.created_by or '-'}"
                      + (f" ({space.provenance.note})" if space.provenance.note else ""), highlight=False, soft_wrap=True)
        console.print(f"size: {space_size(space):,} configurations = {sizes} x {len(space.lr_multipliers)} lr multipliers "
                      f"{list(space.lr_multipliers)}", highlight=False, soft_wrap=True)
        recipe = ", ".join(f"{k}={v}" for k, v in space.seed_recipe.items()) or "-"
        params = f"{space.seed_params:,}" if space.seed_params is not None else "-"
        console.print(f"seed recipe: {recipe}   seed params: {params}", highlight=False, soft_wrap=True)
        table = Table(Column("#", no_wrap=True), Column("slot", no_wrap=True), Column("kind", no_wrap=True),
                      Column("input -> output", no_wrap=True), Column("alternatives (* = seed choice)", ratio=1),
                      show_lines=True)
        for i, slot in enumerate(space.slots):
            shapes = f"{_shape(slot.input_shape)}\n-> {_shape(slot.output_shape)}"
            if slot.interface == "dual":
                shapes += f"\nresidual {_shape(slot.residual_shape)}"
            rows = []
            for k, alternative in enumerate(slot.alternatives):
                role = f" [{alternative.role}]" if alternative.role in ("identity", "zero") else ""
                rows.append(f"{'*' if k == 0 else ' '} {k}: {alternative.description}{role}")
            kind = slot.kind if slot.interface == "single" else f"{slot.kind}\ndual"
            table.add_row(str(i), slot.name, kind, shapes, "\n".join(rows))
        console.print(table, markup=False, highlight=False)
        _, notes = check_space(space, source=str(file))
        for note in notes:
            console.print(f"note: {note}", highlight=False, soft_wrap=True)


# ---------------------------------------------------------------- validate


def _configurations(space: SlottedSpace, every: bool) -> list[tuple[str, Configuration]]:
    """The seed configuration, then (with `every`) each alternative swapped into it, slot by slot."""
    seed = seed_configuration(space)
    found = [("seed", seed)]
    if every:
        for i, slot in enumerate(space.slots):
            for k in range(1, len(slot.alternatives)):
                choices = list(seed.choices)
                choices[i] = k
                found.append((f"{slot.name}={k}", msgspec.structs.replace(seed, choices=tuple(choices))))
    return found


def _describe(space: SlottedSpace, label: str) -> str:
    if label == "seed":
        return "the seed configuration (every slot at alternative 0)"
    name, _, k = label.partition("=")
    slot = next(s for s in space.slots if s.name == name)
    return slot.alternatives[int(k)].description


@space_app.command("validate")
def validate(
    ctx: typer.Context,
    file: SpaceFile,
    task: TaskOption,
    check_all: Annotated[bool, typer.Option("--all", help="Also every alternative, each swapped alone into the seed configuration.")] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda:N.")] = "cpu",
    memory_mb: Annotated[float, typer.Option(help="Memory cap in MB.")] = 11264.0,
    validate_cap_s: Annotated[float, typer.Option(help="Wall-clock cap of each check in seconds.")] = 60.0,
    parallel: Annotated[int, typer.Option(help="Checks run at once (each in its own sandboxed worker).")] = 2,
) -> None:
    """Check a space: static rules, then the seed configuration run in the sandbox (--all: every alternative).

    The static check (format, shapes, scaffold) comes first; then each configuration is
    assembled into one model file and checked as `agentnas check-model` does (static gate,
    build, forward/backward, output shape). With --all, every alternative is swapped alone
    into the seed configuration. One line per configuration; exit 0 only if all are ok.
    """
    from agentnas.ops.home import prepare_home
    from agentnas.ops.run import task_reference
    from agentnas.trainer_daemon.devices import check_device

    file = _space_file(ctx, file)
    with _user_errors():
        space, notes = _load_checked(file)
        spec = _task_spec(task)
    device = check_device(device)
    if not memory_mb > 0 or not validate_cap_s > 0 or parallel < 1:
        Console(stderr=True).print("[red]error:[/red] --memory-mb and --validate-cap-s must be > 0, --parallel >= 1",
                                   highlight=False)
        raise typer.Exit(2)
    for note in notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    first = space.slots[0]
    if tuple(first.input_shape) != tuple(spec.input_shape):
        console.print(f"warning: the first slot takes {list(first.input_shape)} but task {spec.name!r} gives "
                      f"{list(spec.input_shape)}", highlight=False, soft_wrap=True)
    console.print(f"static check ok: {len(space.slots)} slots, {space_size(space):,} configurations", highlight=False)
    home = prepare_home(ctx.obj.home)
    configurations = _configurations(space, check_all)
    sources = [assemble(space, config) for _, config in configurations]
    width = max(len(label) for label, _ in configurations)

    task_ref = task_reference(task)  # workers start in their scratch folder: a relative path would not resolve

    async def run() -> int:
        from agentnas.trainer_daemon.check import check_model_file

        gate = asyncio.Semaphore(parallel)

        async def check(source: str) -> Any:
            async with gate:
                return await check_model_file(source, task_ref, device=device, memory_mb=memory_mb,
                                              scratch_root=home / "scratch", validate_cap_s=validate_cap_s)

        futures = [asyncio.ensure_future(check(source)) for source in sources]  # printed in order as they finish
        failed = 0
        for (label, _), future in zip(configurations, futures):
            result = await future
            if result.status == "ok":
                detail = f"params {result.params:,}  FLOPs/sample {result.flops:,}"
                console.print(f"[green]ok[/green]        {label:<{width}}  {detail}  {_describe(space, label)}",
                              highlight=False, soft_wrap=True)
            else:
                failed += 1
                console.print(f"[red]{result.status:<9}[/red] {label:<{width}}  {_describe(space, label)}: {result.reason}",
                              highlight=False, soft_wrap=True)
        return failed

    failed = asyncio.run(run())
    total = len(configurations)
    console.print(f"{total - failed} of {total} configurations ok", highlight=False)
    if failed:
        raise typer.Exit(1)


# ---------------------------------------------------------------- builtin


@space_app.command("builtin")
def builtin(
    name: Annotated[str, typer.Argument(help="wrn16_4 | resnet18")],
    task: TaskOption,
    out: Annotated[Path, typer.Option(help="Where to write the space JSON.")],
    width_scale: Annotated[float, typer.Option(help="Multiply every width (1.0: the real network).")] = 1.0,
) -> None:
    """Write a built-in space adapted to a task: wrn16_4 or resnet18 (docs/SPACES.md)."""
    from agentnas.agents.builtin_spaces import BUILTIN_SPACES

    with _user_errors():
        if name not in BUILTIN_SPACES:
            raise SpaceError(f"unknown built-in space {name!r}; built-in spaces: {', '.join(BUILTIN_SPACES)}")
        spec = _task_spec(task)
        try:
            space = BUILTIN_SPACES[name](spec, width_scale=width_scale)
        except ValueError as exc:  # an input rank the network does not take, a bad width scale
            raise SpaceError(f"{name} for task {spec.name!r}: {exc}") from None
        space, _ = check_space(space)
        try:
            save_space(space, out)
        except OSError as exc:
            raise SpaceError(f"{out}: cannot write the space file ({exc.strerror or exc})") from None
    console.print(f"wrote {out}: {name} for task {spec.name!r}, {len(space.slots)} slots, "
                  f"{space_size(space):,} configurations, seed params {space.seed_params:,}", highlight=False)
