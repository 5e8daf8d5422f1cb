"""The `agentnas` command line.

User errors (bad config, unreachable bus, missing binary, unwritable home, unknown run,
corrupt log) end with one line on stderr and exit status 2; nothing else is printed.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import msgspec
import typer
from rich.console import Console
from rich.table import Column, Table

from agentnas.bus import messages
from agentnas.bus.config import Config, ConfigError, config_to_toml, load_config, resolve_home
from agentnas.bus.connect import BusUnavailable
from agentnas.bus.logs import configure_logging
from agentnas.bus.server import NatsServerError
from agentnas.ops.home import HomeError, check_log, log_file, need_folder, prepare_home, system_up
from agentnas.ops.space_cli import space_app
from agentnas.store.log import EventLog, LogError
from agentnas.store.log import load_run_state
from agentnas.trainer_daemon.devices import DeviceError
from agentnas.agents.roles import RoleError

app = typer.Typer(
    name="agentnas",
    help="Agentic neural architecture search: LLM seeds, slotted spaces, NAS, a replayable log.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold secrets
    add_completion=False,
)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(space_app, name="space")

console = Console()
USER_ERRORS = (ConfigError, BusUnavailable, NatsServerError, HomeError, LogError, DeviceError, RoleError)


class UserError(RuntimeError):
    """A mistake in the command's input, reported as one line."""


class Context(msgspec.Struct, kw_only=True):
    config: Config
    config_path: Optional[str]
    home: Path
    log_format: str


@app.callback()
def _global(
    ctx: typer.Context,
    home: Annotated[Optional[Path], typer.Option(
        help="Home folder: the event log, NATS store, service logs, weights (else $AGENTNAS_HOME, else ~/.agentnas).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML configuration file.")] = None,
    log_format: Annotated[str, typer.Option(help="auto | console | json")] = "",
    log_level: Annotated[str, typer.Option(help="debug | info | warning | error")] = "",
) -> None:
    overrides = {"log.format": log_format or None, "log.level": log_level or None}
    cfg = load_config(config, overrides)
    configure_logging(cfg.log.format, cfg.log.level)
    ctx.obj = Context(
        config=cfg,
        config_path=str(config) if config else None,
        home=resolve_home(cfg.home, str(home) if home else None),
        log_format=cfg.log.format,
    )


def _open_log(ctx: Context) -> EventLog:
    need_folder(ctx.home)
    path = log_file(ctx.home)
    if not path.exists():
        raise UserError(f"no event log at {path} (start the system with `agentnas up`, or pass --home)")
    return EventLog(path, readonly=True)


def _need_run(event_log: EventLog, run_id: str) -> None:
    if not event_log.run_exists(run_id):
        raise UserError(f"run '{run_id}' does not exist in {event_log.path} (see `agentnas runs`)")


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def quiet_logs(c: Context) -> None:
    """This process's log lines go to <home>/logs/agentnas.log instead of the screen."""
    (c.home / "logs").mkdir(parents=True, exist_ok=True)
    configure_logging("json", c.config.log.level, stream=open(c.home / "logs" / "agentnas.log", "a", buffering=1))


def run_service(serve) -> None:
    """Run `serve(stop)` until SIGINT/SIGTERM sets `stop` (every service command does this)."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(stop)

    asyncio.run(main())


# --- up and services -----------------------------------------------------------------------


@app.command()
def up(
    ctx: typer.Context,
    nats_url: Annotated[Optional[str], typer.Option(help="Use this NATS server instead of starting one.")] = None,
    run_for: Annotated[float, typer.Option("--for", help="Stop by itself after this many seconds (0: until Ctrl-C).")] = 0.0,
) -> None:
    """Start the bus (unless --nats-url), the recorder and every service, supervised."""
    from agentnas.ops.up import run_up

    c: Context = ctx.obj
    prepare_home(c.home)
    asyncio.run(run_up(c.config, c.home, c.config_path, nats_url or c.config.bus.url, run_for, console))


@app.command()
def recorder(
    ctx: typer.Context,
    nats_url: Annotated[str, typer.Option(help="NATS server URL.")],
) -> None:
    """Run the recorder service in the foreground (normally started by `agentnas up`)."""
    from agentnas.bus.health import Health
    from agentnas.store.recorder import record

    c: Context = ctx.obj
    prepare_home(c.home)
    run_service(lambda stop: record(nats_url, log_file(c.home), bus=c.config.bus, stop=stop,
                                    health=Health(c.home, "recorder")))


@app.command()
def trainer(
    ctx: typer.Context,
    nats_url: Annotated[str, typer.Option(help="NATS server URL.")],
    device: Annotated[str, typer.Option(help="cpu or cuda:N.")] = "cpu",
    concurrency: Annotated[int, typer.Option(help="Candidates trained at once (0: config, else auto).")] = 0,
    warm: Annotated[Optional[list[str]], typer.Option(help="Tasks to start warm workers for at once.")] = None,
) -> None:
    """Run a trainer daemon for one device in the foreground (normally started by `agentnas up`)."""
    from agentnas.trainer_daemon.daemon import serve
    from agentnas.trainer_daemon.devices import default_concurrency, parse_device

    c: Context = ctx.obj
    prepare_home(c.home)
    device = parse_device(device)
    k = concurrency or c.config.trainer.concurrency or default_concurrency(device)
    run_service(lambda stop: serve(nats_url, c.home, device=device, concurrency=k, config=c.config.trainer,
                                   bus=c.config.bus, stop=stop, warm_tasks=tuple(warm or ())))


@app.command("check-model")
def check_model(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="Python file defining `class Architecture(nn.Module)`.")],
    task: Annotated[str, typer.Option(help="Built-in task name or task TOML file (see `agentnas tasks`).")],
    device: Annotated[str, typer.Option(help="cpu or cuda:N.")] = "cpu",
    memory_mb: Annotated[float, typer.Option(help="Memory cap in MB.")] = 11264.0,
    validate_cap_s: Annotated[float, typer.Option(
        help="Wall-clock cap of the whole check in seconds (a run's proxy.validate_time_cap_s).")] = 60.0,
) -> None:
    """Check a model file: static gate, then build, forward/backward, shapes, FLOPs, memory (exit 0 only if ok)."""
    from agentnas.ops.run import task_reference
    from agentnas.trainer_daemon.check import check_model_file
    from agentnas.trainer_daemon.devices import check_device
    from agentnas.trainer_daemon.tasks import TaskError, load_task

    c: Context = ctx.obj
    device = check_device(device)
    if not memory_mb > 0:
        raise UserError(f"--memory-mb must be a positive number of MB, got {memory_mb:g}")
    prepare_home(c.home)  # scratch folders live there
    try:
        load_task(task)
    except TaskError as exc:
        raise UserError(str(exc)) from None
    task = task_reference(task)  # the worker starts in its scratch folder: a relative path would not resolve there
    try:
        source = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read model file {file}: {getattr(exc, 'strerror', None) or exc}") from None
    if not validate_cap_s > 0:
        raise UserError(f"--validate-cap-s must be > 0, got {validate_cap_s:g}")
    result = asyncio.run(check_model_file(source, task, device=device, memory_mb=memory_mb,
                                          scratch_root=c.home / "scratch", validate_cap_s=validate_cap_s))
    if result.status == "ok":
        console.print(f"[green]ok[/green]  params {result.params:,}  FLOPs/sample {result.flops:,}  "
                      f"peak memory {result.peak_memory_mb:.1f} MB", highlight=False)
        for warning in result.warnings:
            console.print(f"warning: {warning}", highlight=False)
        return
    console.print(f"[red]{result.status}[/red]: {result.reason}", highlight=False, soft_wrap=True)
    if result.traceback:
        Console(stderr=True).print(result.traceback, highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(1)


@app.command()
def tasks(
    ctx: typer.Context,
    task_file: Annotated[Optional[Path], typer.Argument(help="Check this task TOML file: 'ok' and what it holds, or the problem.")] = None,
) -> None:
    """List the built-in tasks, or check a custom task file (your own dataset).

    A task file is TOML: name, input_shape (per sample, channels first), output_shape
    (\\[num_classes] for classification, else the per-sample target shape), loss, metric,
    optional description, blind, published_best; then a \\[files] table naming .npy files
    train_x, train_y, valid_x, valid_y, test_x, test_y (optional valid_groups, test_groups),
    relative to the TOML file's folder. Arrays have the sample axis first; inputs are read
    as float32, class labels as int64 ids. The format, every loss and metric, and a worked
    example: docs/DATASETS.md.
    """
    from agentnas.trainer_daemon.tasks import TaskError, describe_task, list_tasks, load_task

    if task_file is not None:
        try:
            data = load_task(str(task_file))
        except TaskError as exc:
            raise UserError(str(exc)) from None
        sys.stdout.write(f"ok  {task_file}: task {data.spec.name!r}: {describe_task(data)}\n")  # one line, never wrapped
        return
    specs = list_tasks()
    table = Table("task", "input", "output", "loss", "metric (lower is better)", "blind")
    for spec in specs:
        table.add_row(spec.name, "x".join(map(str, spec.input_shape)), "x".join(map(str, spec.output_shape)),
                      spec.loss, spec.metric, "yes" if spec.blind else "")
    console.print(table)


@app.command()
def agent(
    ctx: typer.Context,
    role: Annotated[str, typer.Argument(help="planner | explorer | code_executor")],
    nats_url: Annotated[str, typer.Option(help="NATS server URL.")],
    impl: Annotated[Optional[str], typer.Option(help="Serve the role with this module:Class instead of the config's.")] = None,
) -> None:
    """Run one agent in the foreground (normally started by `agentnas up` / `run`)."""
    from agentnas.agents.roles import role_class
    from agentnas.agents.runtime import serve_role

    c: Context = ctx.obj
    config = c.config
    if impl:
        config = msgspec.structs.replace(config, agents=msgspec.structs.replace(config.agents, **{role: impl}))
    cls = role_class(config, role)
    prepare_home(c.home)
    run_service(lambda stop: serve_role(cls, nats_url, config, c.home, stop=stop))


def _planner_impl(config: Config, planner: str | None, llm: str | None, on_divergence: str) -> str | None:
    """The planner's module:Class (None: the configured one), after checking --planner, --llm none
    and --on-divergence together, so that a bad combination stops before anything starts."""
    from agentnas.agents.roles import RULE_PLANNER, role_class

    if on_divergence not in ("stop", "live"):
        raise UserError(f"--on-divergence must be 'stop' or 'live', not '{on_divergence}'")
    if planner not in (None, "llm", "rule") and ":" not in planner:
        raise UserError(f"--planner must be llm, rule or module:Class, not '{planner}'")
    if llm == "none" and planner == "llm":
        raise UserError("--planner llm needs an LLM but --llm none asks for none; drop one of them")
    if llm == "none" and planner is None:
        planner = "rule"
    impl = {"rule": RULE_PLANNER, "llm": None, None: None}.get(planner, planner)
    try:
        role_class(msgspec.structs.replace(config, agents=msgspec.structs.replace(
            config.agents, planner=impl or config.agents.planner)), "planner")
    except RoleError as exc:
        raise UserError(f"--planner: {exc}" if planner not in (None, "llm") else str(exc)) from None
    return impl


PIPELINES = {(1,): "Phase 1 only", (1, 2): "Phases 1 and 2", (1, 2, 3): "the whole pipeline"}


def _phases(text: str) -> tuple[int, ...]:
    try:
        wanted = tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        raise UserError(f"--phases must be a comma list of numbers, not '{text}'") from None
    if wanted not in PIPELINES:
        raise UserError(f"--phases {text}: each phase starts from the one before (Phase 2 from Phase 1's seed, "
                        "Phase 3 from Phase 2's space), so give 1, 1,2 or 1,2,3; to search a space alone use "
                        "`agentnas search --space FILE`")
    return wanted


def _with_search_options(config: Config, budget: int | None, algo: str | None) -> Config:
    if budget is not None:
        if budget < 1:
            raise UserError("--budget must be at least 1")
        config = msgspec.structs.replace(
            config, phase1=msgspec.structs.replace(config.phase1, budget=budget),
            evolution=msgspec.structs.replace(config.evolution, budget=budget))
    if algo is not None:
        if algo not in ("re", "rs", "gdas"):
            raise UserError(f"--algo must be re (regularized evolution), rs (random search) or gdas, not '{algo}'")
        config = msgspec.structs.replace(config, evolution=msgspec.structs.replace(config.evolution, algorithm=algo))
    return config


@app.command()
def run(
    ctx: typer.Context,
    task: Annotated[Optional[str], typer.Argument(help="Built-in task name or task TOML file (see `agentnas tasks`).")] = None,
    phases: Annotated[str, typer.Option(help="1, 1,2 or 1,2,3 (the whole pipeline).")] = "1,2,3",
    llm: Annotated[Optional[str], typer.Option(help="anthropic[:MODEL] | openai:MODEL | replay:LOG\\[#RUN] (a recorded run: its answers and evaluation results) | none (no LLM: rule-based roles).")] = None,
    on_divergence: Annotated[str, typer.Option(help="With replay: stop | live.")] = "stop",
    retrain: Annotated[bool, typer.Option("--retrain", help="With replay of an event log: train every evaluation "
                                          "again instead of serving the recorded results.")] = False,
    budget: Annotated[Optional[int], typer.Option(help="Evaluation budget of each search phase.")] = None,
    algo: Annotated[Optional[str], typer.Option(help="Phase 3: re | rs | gdas (default: the config's, re).")] = None,
    planner: Annotated[Optional[str], typer.Option(help="llm | rule | module:Class.")] = None,
    resume: Annotated[Optional[str], typer.Option(help="Continue this run (its processes all stopped) instead of starting one.")] = None,
    nats_url: Annotated[Optional[str], typer.Option(help="Use this NATS server instead of starting one.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also show this process's log lines.")] = False,
) -> None:
    """Run the pipeline on a task end to end (Phase 1 -> 1.5 -> 2 -> 3 -> final), with live progress."""
    from agentnas.agents.llm_settings import LlmError, LlmSettings
    from agentnas.agents.providers import preflight
    from agentnas.agents.roles import RULE_PLANNER, WITHOUT_LLM
    from agentnas.ops.recorded import results_for_replay
    from agentnas.ops.run import ResumeError, resume_pipeline, run_pipeline
    from agentnas.trainer_daemon.tasks import TaskError, load_task

    c: Context = ctx.obj
    if resume is not None:
        if task is not None:
            raise UserError("--resume continues a run as it was requested; give no task with it")
        if not verbose:
            quiet_logs(c)
        try:
            status = asyncio.run(resume_pipeline(c.config, c.home, c.config_path, resume,
                                                 nats_url or c.config.bus.url or None, console, verbose=verbose))
        except ResumeError as exc:
            raise UserError(str(exc)) from None
        if status != "finished":
            raise typer.Exit(1)
        return
    if task is None:
        raise UserError("give a task (a built-in name or a task .toml file; see `agentnas tasks`), or --resume RUN")
    wanted = _phases(phases)
    config = _with_search_options(c.config, budget, algo)
    impl = _planner_impl(config, planner, llm, on_divergence)
    no_llm, llm = llm == "none", (None if llm == "none" else llm)
    roles = {**WITHOUT_LLM} if no_llm else {}
    if impl:
        roles["planner"] = impl
    prepare_home(c.home)
    try:
        load_task(task)
    except TaskError as exc:
        raise UserError(str(exc)) from None
    try:  # a bad key, an unknown model or an unreadable recording stops here, before anything starts
        if impl != RULE_PLANNER and not no_llm:
            asyncio.run(preflight(LlmSettings.from_config(config.llm, llm, on_divergence=on_divergence)))
        recorded = ("", []) if retrain else results_for_replay(llm)
    except LlmError as exc:
        raise UserError(str(exc)) from None
    check_log(c.home)  # a log the recorder could not write stops the run here, not in a restart loop
    if not verbose:  # services log to <home>/logs/; this process too, unless asked
        quiet_logs(c)
    status = asyncio.run(run_pipeline(config, c.home, c.config_path, task, wanted, llm, on_divergence, roles,
                                      nats_url or config.bus.url or None, console, recorded=recorded))
    if status != "finished":
        raise typer.Exit(1)


@app.command()
def audit(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="Run id (see `agentnas runs`).")],
    agent_name: Annotated[Optional[str], typer.Option("--agent", help="Only this agent's calls.")] = None,
    full: Annotated[bool, typer.Option(help="Do not shorten long messages.")] = False,
) -> None:
    """Print a run's LLM decision log: request, answer, tokens, cost, and what each call caused."""
    from agentnas.ops.audit import AuditError, render_audit

    with _open_log(ctx.obj) as event_log:
        _need_run(event_log, run_id)
        try:
            render_audit(event_log, run_id, agent=agent_name, full=full, console=console)
        except AuditError as exc:
            raise UserError(str(exc)) from None


# --- reading the log ------------------------------------------------------------------------


@app.command()
def runs(ctx: typer.Context) -> None:
    """List the runs in the log."""
    with _open_log(ctx.obj) as event_log:
        summaries = event_log.runs()
        table = Table("status", "events", "started", "last event")
        # run ids are copied into other commands: never shorten them
        table.columns.insert(0, Column("run", no_wrap=True, min_width=max((len(r.run_id) for r in summaries), default=3)))
        up = system_up(ctx.obj.home)
        for r in summaries:
            shown = "interrupted" if r.status in ("requested", "running") and not up else r.status
            table.add_row(r.run_id, shown or "-", str(r.n_events), _when(r.first_time), _when(r.last_time))
        console.print(table)


@app.command()
def status(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="Run id (see `agentnas runs`).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the folded state as JSON.")] = False,
) -> None:
    """Show a run's state, folded from its events."""
    from agentnas.ops.views import render_machinery, render_state

    c: Context = ctx.obj
    with _open_log(c) as event_log:
        _need_run(event_log, run_id)
        state = load_run_state(event_log, run_id)
        services = load_run_state(event_log, "_system") if event_log.run_exists("_system") else None
    up = system_up(c.home)
    interrupted = not up and state.status in ("requested", "running")  # nothing is working on it
    if as_json:  # the same word the table shows: a run nobody works on is not "running"
        shown = msgspec.structs.replace(state, status="interrupted") if interrupted else state
        sys.stdout.write(msgspec.json.encode(shown).decode() + "\n")
        return
    render_state(console, state, interrupted=interrupted, home=c.home)
    render_machinery(console, c.home, services, up=up)


@app.command()
def events(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="Run id (see `agentnas runs`).")],
    kind: Annotated[Optional[list[str]], typer.Option("--kind", "-k", help="Only these kinds (repeatable).")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON envelope per line.")] = False,
    limit: Annotated[int, typer.Option(help="Print at most this many (0: all).")] = 0,
) -> None:
    """Print a run's events in log order."""
    from agentnas.ops.views import event_line

    unknown_kinds = [k for k in kind or [] if k not in messages.KINDS]
    if unknown_kinds:
        raise UserError(f"unknown kind {unknown_kinds[0]!r}; known kinds: {', '.join(sorted(messages.KINDS))}")
    with _open_log(ctx.obj) as event_log:
        if not follow:
            _need_run(event_log, run_id)
        after, printed = 0, 0
        while True:
            rows = event_log.rows(run_id, after_seq=after, limit=1000, kinds=kind)
            for row in rows:
                if as_json:
                    sys.stdout.write(json.dumps({**msgspec.structs.asdict(row), "payload": json.loads(row.payload), "sender": json.loads(row.sender)}) + "\n")
                else:
                    console.print(event_line(row), highlight=False, soft_wrap=True)
                printed += 1
                if limit and printed >= limit:
                    return
            if rows:
                after = rows[-1].seq
                continue
            if not follow:
                return
            sys.stdout.flush()
            time.sleep(0.3)


@app.command()
def search(
    ctx: typer.Context,
    space: Annotated[str, typer.Option(help="A space file (see docs/SPACES.md) or builtin:wrn16_4 | builtin:resnet18.")],
    task: Annotated[str, typer.Option(help="Built-in task name or task TOML file.")],
    algo: Annotated[Optional[str], typer.Option(help="re | rs | gdas (default: the config's, re).")] = None,
    budget: Annotated[Optional[int], typer.Option(help="Evaluation budget of the search.")] = None,
    nats_url: Annotated[Optional[str], typer.Option(help="Use this NATS server instead of starting one.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also show this process's log lines.")] = False,
) -> None:
    """Phase 3 alone, no LLM: search a slotted space on a task, then train and report the winner."""
    from agentnas.agents.builtin_spaces import BUILTIN_SPACES
    from agentnas.bus import space as sp
    from agentnas.ops.run import run_pipeline
    from agentnas.trainer_daemon.tasks import TaskError, load_task

    c: Context = ctx.obj
    config = _with_search_options(c.config, budget, algo)
    try:
        spec = load_task(task).spec
    except TaskError as exc:
        raise UserError(str(exc)) from None
    try:
        if space.startswith("builtin:"):
            name = space.removeprefix("builtin:")
            if name not in BUILTIN_SPACES:
                raise UserError(f"--space builtin:{name}: no such built-in space; built-in: "
                                + ", ".join(f"builtin:{n}" for n in BUILTIN_SPACES))
            chosen = BUILTIN_SPACES[name](spec)
            notes = [f"built-in space {name}"]
        else:
            chosen = sp.load_space(space)
            notes = [f"given: {space}"]
        chosen, trims = sp.check_space(chosen, max_slots=config.slots.max_slots,
                                       max_alternatives=config.slots.max_alternatives, source=space)
    except (sp.SpaceError, ValueError) as exc:
        raise UserError(str(exc)) from None
    if tuple(chosen.slots[0].input_shape) != tuple(spec.input_shape):
        raise UserError(f"--space {space}: its first slot takes {list(chosen.slots[0].input_shape)}, but task "
                        f"{spec.name} gives {list(spec.input_shape)}")
    prepare_home(c.home)
    check_log(c.home)
    if not verbose:
        quiet_logs(c)
    status = asyncio.run(run_pipeline(config, c.home, c.config_path, task, (3,), None, "stop", {},
                                      nats_url or config.bus.url or None, console, space=chosen,
                                      space_notes=notes + trims))
    if status != "finished":
        raise typer.Exit(1)


@app.command()
def report(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="Run id (see `agentnas runs`).")],
    out: Annotated[Optional[Path], typer.Option(help="Folder for report.md and its figures [<home>/runs/RUN/report].")] = None,
) -> None:
    """Write a Markdown report of a run with PNG figures (search progress, cost against metric, choices)."""
    from agentnas.ops.report import write_report

    c: Context = ctx.obj
    with _open_log(c) as event_log:
        _need_run(event_log, run_id)
        state = event_log.run_state(run_id)
    folder = out or c.home / "runs" / run_id / "report"
    try:
        path = write_report(state, folder)
    except OSError as exc:
        raise UserError(f"cannot write the report to {folder}: {exc.strerror or exc}") from None
    console.print(f"report: {path}", highlight=False, soft_wrap=True)


@app.command()
def export(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="Run id (see `agentnas runs`).")],
    out: Annotated[Path, typer.Option(help="Folder to write the standalone model into.")],
) -> None:
    """Copy a finished run's network (code, weights, recipe, metrics, space) with a README; needs torch only."""
    from agentnas.ops.export import ExportError, export_run

    c: Context = ctx.obj
    with _open_log(c) as event_log:
        _need_run(event_log, run_id)
        state = event_log.run_state(run_id)
    try:
        folder = export_run(c.home, state, out)
    except ExportError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"cannot export to {out}: {exc.strerror or exc}") from None
    console.print(f"exported {run_id} to {folder} (README.md, model.py, weights.pt, recipe.json, metrics.json)",
                  highlight=False, soft_wrap=True)


@app.command()
def demo(
    ctx: typer.Context,
    scripted: Annotated[bool, typer.Option("--scripted", help="Run the LLM roles against a local server that answers from a bundled transcript.")] = False,
    llm: Annotated[Optional[str], typer.Option(help="Use this LLM (anthropic[:MODEL] | openai:MODEL); default: none, the rule-based roles.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also show this process's log lines.")] = False,
) -> None:
    """The whole pipeline on the built-in task addigits with small budgets (minutes on a laptop CPU),
    then its report and the exported model."""
    from contextlib import ExitStack

    from agentnas.agents.llm_settings import LlmError, LlmSettings
    from agentnas.agents.providers import preflight
    from agentnas.agents.roles import WITHOUT_LLM
    from agentnas.ops import demo as d
    from agentnas.ops.export import export_run
    from agentnas.ops.report import write_report
    from agentnas.ops.run import run_pipeline

    c: Context = ctx.obj
    if scripted and llm:
        raise UserError("--scripted answers from a transcript; it cannot be combined with --llm")
    prepare_home(c.home)
    check_log(c.home)
    if not verbose:
        quiet_logs(c)
    with ExitStack() as stack:
        base_url = d.scripted_provider(stack) if scripted else ""
        config = d.demo_config(c.config, scripted=scripted, base_url=base_url)
        config_path = d.write_config(config, c.home)
        if scripted:
            console.print("demo with SCRIPTED LLM answers: the planner, modularizer, slot planner and code executor "
                          "talk to a local server that replays a bundled transcript, through the real Anthropic SDK; "
                          "no real LLM is asked anything.", highlight=False, soft_wrap=True)
            roles, llm_spec = {}, "anthropic"
        elif llm:
            try:
                asyncio.run(preflight(LlmSettings.from_config(config.llm, llm)))
            except LlmError as exc:
                raise UserError(str(exc)) from None
            roles, llm_spec = {}, llm
        else:
            console.print("demo without an LLM: the rule-based planner writes the seeds and the slotted space is built "
                          "from its designs (pass --scripted to watch the LLM path, or --llm PROVIDER to use one).",
                          highlight=False, soft_wrap=True)
            roles, llm_spec = dict(WITHOUT_LLM), None
        ran: list[str] = []
        status = asyncio.run(run_pipeline(config, c.home, str(config_path), d.TASK, (1, 2, 3), llm_spec, "stop",
                                          roles, c.config.bus.url or None, console, run_id_out=ran))
    if not ran:
        raise typer.Exit(1)
    with EventLog(log_file(c.home), readonly=True) as event_log:
        state = event_log.run_state(ran[0])
    report_path = write_report(state, c.home / "runs" / ran[0] / "report")
    console.print(f"report: {report_path}", highlight=False, soft_wrap=True)
    if state.result is not None:
        exported = export_run(c.home, state, c.home / "runs" / ran[0] / "export")
        console.print(f"exported model: {exported} (README.md, model.py, weights.pt; needs torch only)",
                      highlight=False, soft_wrap=True)
    if status != "finished":
        raise typer.Exit(1)


@config_app.command("show")
def config_show(ctx: typer.Context) -> None:
    """Print the effective configuration as TOML (defaults, file, flags), the home folder resolved."""
    c: Context = ctx.obj
    sys.stdout.write(config_to_toml(msgspec.structs.replace(c.config, home=str(c.home))))


def main() -> None:
    try:
        app()
    except (UserError, *USER_ERRORS) as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
