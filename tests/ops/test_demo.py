"""`agentnas demo`, the README's first command: the whole pipeline (Phase 1 -> 1.5 -> 2 -> 3 ->
final training) on addigits with no LLM, through the real services, then the report and the
exported model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]


def test_the_demo_runs_the_whole_pipeline_and_hands_over_report_and_model(tmp_path):
    home = tmp_path / "home"
    done = run_cli("--home", str(home), "demo", timeout=1100)
    out = " ".join(done.stdout.split())
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "demo without an LLM" in out and "result of" in out
    (run,) = [p for p in (home / "runs").iterdir() if p.is_dir()]
    report = (run / "report" / "report.md").read_text()
    assert "## Best validation metric so far" in report and (run / "report" / "best_so_far.png").stat().st_size > 0
    assert "Pareto front" in report and "## Time and cost per stage" in report
    export = run / "export"
    assert {"README.md", "model.py", "weights.pt", "recipe.json", "metrics.json", "space.json"} <= \
        {p.name for p in export.iterdir()}
    metrics = json.loads((export / "metrics.json").read_text())
    assert [s["phase"] for s in metrics["stages"]] == ["1", "1.5", "2", "3", "final"]
    # the exported model is standalone: it builds and loads its weights with torch alone
    loaded = subprocess.run([sys.executable, "-c", "import sys, model; m = model.load(); "
                             "print(sum(p.numel() for p in m.parameters())); "
                             "print(any(k.startswith('agentnas') for k in sys.modules))"],
                            cwd=export, capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr
    params, imported = loaded.stdout.split()
    assert int(params) == metrics["params"] and imported == "False"
