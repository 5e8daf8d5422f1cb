"""Does Phase 3 beat the seed? The seed against the best of RE, RS and GDAS, a few run seeds each.

    python -m agentnas.ops.bench.compare_search --out DIR [--tasks addigits,digitwave]
        [--methods seed,re,rs,gdas] [--seeds 42,43,44] [--budget 12] [--epochs 10] [--gdas-epochs 6]
        [--width-scale 0.25] [--timeout 3600]

Each (task, method, seed) is one run of the real CLI in a subprocess, in a fresh home
(`DIR/TASK/METHOD-sSEED/home`):

    python -m agentnas.ops.cli --home H --config C search --space FILE --task T --algo A --budget B

The space is the built-in ResNet-18 (`agentnas space builtin resnet18 --width-scale W`), with
its seed recipe's epochs set to `--epochs` so that the proxy (0.3 of them) and both waves of
final training stay short on a CPU. The configuration holds `seed = S` and a small but
faithful regularized evolution (population 8 = seed + 2 single + 2 double mutations + 3 random,
tournament 3, 3 generations, top 2 fully trained). RE and RS get the same `--budget`
evaluations; GDAS trains its supernet for `--gdas-epochs` epochs, then evaluates its argmax and
the seed configuration (2 evaluations). The `seed` method is `search --budget 1`: only the seed
configuration is proposed, so the winner is the seed and its wave-2 test metric is the seed's.

Results are read from each home's event log (`run.finished`'s RunResult) and appended to
`DIR/results.json`; a cell already there is skipped, so an interrupted grid resumes where it
stopped. `DIR/progress.log` says what runs now. The end is a Markdown table per task: mean and
sample standard deviation of the test metric over the seeds, the per-seed values, and the
mean wall-clock per run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

METHODS = ("seed", "re", "rs", "gdas")
NEVER_BEAT = "NAS never beat the seed"


def cli(home: Path | None, *args: str) -> list[str]:
    cmd = [sys.executable, "-m", "agentnas.ops.cli"]
    if home is not None:
        cmd += ["--home", str(home)]
    return cmd + list(args)


def make_space(task: str, width_scale: float, epochs: int, folder: Path) -> Path:
    """The built-in ResNet-18 space for `task`, its seed recipe cut to `epochs` epochs."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "space.json"
    if not path.exists():
        raw = folder / "space-builtin.json"
        subprocess.run(cli(None, "space", "builtin", "resnet18", "--task", task, "--out", str(raw),
                           "--width-scale", str(width_scale)), check=True, capture_output=True, text=True)
        space = json.loads(raw.read_text())
        space["seed_recipe"] = {**space["seed_recipe"], "epochs": epochs}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(space, indent=1))
        tmp.replace(path)
    return path


def config_text(seed: int, gdas_epochs: int) -> str:
    return (f"seed = {seed}\n\n[evolution]\npopulation = 8\ninit_single_mutations = 2\ninit_double_mutations = 2\n"
            f"init_random = 3\ntournament = 3\ngenerations = 3\ntop_k_full = 2\ngdas_epochs = {gdas_epochs}\n\n"
            "[trainer]\nconcurrency = 2\n")


def read_result(home: Path) -> dict[str, Any]:
    """The run's outcome from the home's event log."""
    from agentnas.store.log import EventLog, log_path

    path = log_path(home)
    if not path.exists():
        return {"status": "no log"}
    log = EventLog(path, readonly=True)
    try:
        runs = [r for r in log.runs() if not r.run_id.startswith("_")]
        if not runs:
            return {"status": "no run"}
        state = log.run_state(runs[-1].run_id)
    finally:
        log.close()
    out: dict[str, Any] = {"run_id": state.run_id, "status": state.status}
    if state.failure:
        out["failure"] = state.failure
    result = state.result
    if result is None:
        return out
    w, s = result.winner, result.seed
    out.update(
        rule=result.rule, metric=result.metric,
        winner={"arch_id": w.arch_id, "phase": w.phase, "val": w.val_metric, "test": w.test_metric,
                "params": w.params, "lr": w.recipe.get("lr"), "choices": [list(c) for c in w.choices]},
        seed_outcome=None if s is None else {"val": s.val_metric, "test": s.test_metric, "params": s.params},
        phases={p.phase: {"wall_s": round(p.wall_s, 1), "device_s": round(p.device_s, 1),
                          "evaluations": p.evaluations} for p in result.phases})
    # The reporting rule reports the best non-seed when the seed has the best wave-1 validation
    # metric; "selected" is what validation alone picks (the seed, then), for a second view.
    gdas = state.search.gdas
    if gdas is not None:  # the supernet search itself (GDAS runs only)
        out["gdas"] = {"status": gdas.status, "reason": gdas.reason[:300], "wall_s": round(gdas.wall_time_s, 1),
                       "device_s": round(gdas.device_time_s, 1),
                       "argmax_is_seed": gdas.choices is not None and not any(gdas.choices)}
    out["test"] = w.test_metric
    out["selected_test"] = s.test_metric if (s is not None and result.rule.startswith(NEVER_BEAT)) else w.test_metric
    return out


def run_one(task: str, method: str, seed: int, space: Path, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    home = folder / "home"
    if home.exists():  # an interrupted attempt: start the cell afresh
        import shutil
        shutil.rmtree(home)
    config = folder / "config.toml"
    config.write_text(config_text(seed, args.gdas_epochs))
    algo, budget = ("re", 1) if method == "seed" else (method, args.budget)
    cmd = cli(home, "--config", str(config), "search", "--space", str(space), "--task", task, "--algo", algo,
              "--budget", str(budget))
    start = time.monotonic()
    with open(folder / "cli.out", "w") as out:
        out.write(" ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # the CLI's own process group: it stops its services
            try:
                rc = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
            rc = f"timeout after {args.timeout} s (rc {rc})"
    wall = time.monotonic() - start
    record = {"task": task, "method": method, "seed": seed, "algo": algo, "budget": budget, "rc": rc,
              "wall_s": round(wall, 1), "home": str(home), **read_result(home)}
    return record


def load_results(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text()) if path.exists() else []


def save_results(path: Path, results: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(path)


def fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def counts(r: dict[str, Any]) -> bool:
    """A run whose winner stands for its method: finished with a test metric, and for GDAS a
    supernet search that succeeded (when it fails, the run falls back to the seed alone)."""
    if r.get("status") != "finished" or r.get("test") is None:
        return False
    return r["method"] != "gdas" or r.get("gdas", {}).get("status") == "ok"


def per_seed_text(r: dict[str, Any] | None, digits: int) -> str:
    if r is None:
        return "-"
    if counts(r):
        return fmt(r["test"], digits)
    if r.get("gdas", {}).get("status") not in (None, "ok"):
        return f"GDAS failed (seed: {fmt(r.get('test'), digits)})"
    return f"failed ({r.get('status')})"


def tables(results: list[dict[str, Any]], tasks: list[str], methods: list[str], seeds: list[int]) -> str:
    lines: list[str] = []
    for task in tasks:
        rows = [r for r in results if r["task"] == task]
        metric = next((r.get("metric") for r in rows if r.get("metric")), "test metric")
        digits = 2 if metric == "error_pct" else 4
        lines += [f"### {task} ({metric}, lower is better)", "",
                  "| method | runs ok | test mean | test sd | per seed (" + ", ".join(map(str, seeds)) + ") "
                  "| seed won on val | val-selected test mean | wall-clock per run (min) | Phase 3 evaluations (proxy + wave 1) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for method in methods:
            cell = {r["seed"]: r for r in rows if r["method"] == method}
            ok = [cell[s] for s in seeds if s in cell and counts(cell[s])]
            mean, sd = mean_sd([r["test"] for r in ok])
            per_seed = ", ".join(per_seed_text(cell.get(s), digits) for s in seeds)
            if method == "seed":
                won, sel = "-", "-"
            else:
                won = f"{sum(1 for r in ok if str(r.get('rule', '')).startswith(NEVER_BEAT))}/{len(ok)}"
                sel = fmt(mean_sd([r["selected_test"] for r in ok if r.get("selected_test") is not None])[0], digits)
            walls = [cell[s]["wall_s"] for s in seeds if s in cell]
            evals = [r.get("phases", {}).get("3", {}).get("evaluations") for r in ok]
            evals_text = ", ".join(str(e) for e in sorted(set(e for e in evals if e is not None))) or "-"
            lines.append(f"| {method} | {len(ok)}/{len(seeds)} | {fmt(mean, digits)} | {fmt(sd, digits)} | {per_seed} | "
                         f"{won} | {sel} | {fmt(statistics.fmean(walls) / 60 if walls else None, 1)} | {evals_text} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="Folder for spaces, homes, results.json and progress.log (resumable) [a temp dir].")
    parser.add_argument("--tasks", default="addigits,digitwave")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="42,43,44")
    parser.add_argument("--budget", type=int, default=12, help="Evaluations of each RE and RS search.")
    parser.add_argument("--epochs", type=int, default=10, help="The seed recipe's (full) epochs; the proxy runs 0.3 of them.")
    parser.add_argument("--gdas-epochs", type=int, default=6, help="GDAS supernet epochs.")
    parser.add_argument("--width-scale", type=float, default=0.25, help="ResNet-18's widths times this.")
    parser.add_argument("--timeout", type=float, default=3600.0, help="Wall-clock cap of one run, in seconds.")
    parser.add_argument("--reread", action="store_true",
                        help="Read every recorded run's result again from its home's event log (no training).")
    args = parser.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    methods = [m for m in args.methods.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if bad := [m for m in methods if m not in METHODS]:
        parser.error(f"--methods: unknown {bad}; known: {', '.join(METHODS)}")
    out = args.out or Path(tempfile.mkdtemp(prefix="compare-search-"))
    out.mkdir(parents=True, exist_ok=True)
    results_path, progress = out / "results.json", out / "progress.log"
    results = load_results(results_path)

    def note(text: str) -> None:
        with open(progress, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    note(f"start: {' '.join(sys.argv)}")
    if args.reread:
        results = [{**r, **read_result(Path(r["home"]))} for r in results]
        save_results(results_path, results)
    grid = [(t, m, s) for t in tasks for s in seeds for m in methods]  # a partial grid stays balanced
    for i, (task, method, seed) in enumerate(grid, 1):
        done = next((r for r in results if (r["task"], r["method"], r["seed"]) == (task, method, seed)
                     and r.get("budget") == (1 if method == "seed" else args.budget)), None)
        if done is not None:
            note(f"[{i}/{len(grid)}] {task} {method} seed {seed}: already in results.json, skipped")
            continue
        space = make_space(task, args.width_scale, args.epochs, out / task)
        note(f"[{i}/{len(grid)}] {task} {method} seed {seed}: running")
        record = run_one(task, method, seed, space, out / task / f"{method}-s{seed}", args)
        record.update(epochs=args.epochs, gdas_epochs=args.gdas_epochs, width_scale=args.width_scale)
        results = [r for r in load_results(results_path)
                   if (r["task"], r["method"], r["seed"]) != (task, method, seed)] + [record]
        save_results(results_path, results)
        note(f"[{i}/{len(grid)}] {task} {method} seed {seed}: {record['status']}, rc {record['rc']}, "
             f"test {record.get('test')}, {record['wall_s']:.0f} s"
             + (f", failure: {record['failure']}" if record.get("failure") else ""))
    note("done")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} "
          f"{platform.python_version()}; results in {results_path}")
    print(f"space: built-in resnet18 x{args.width_scale}, seed recipe {args.epochs} epochs; RE/RS budget "
          f"{args.budget}; GDAS {args.gdas_epochs} supernet epochs + argmax + seed configuration; seeds {args.seeds}\n")
    print(tables(results, tasks, methods, seeds))


if __name__ == "__main__":
    main()
