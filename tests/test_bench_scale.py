"""bench/scale.py runs at a tiny size, so it cannot rot, (d) the pandas + GX baseline included. Its timings
are not asserted: machines are noisy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_scale_bench_smoke(tmp_path):
    out = tmp_path / "scale.json"
    proc = subprocess.run(
        [sys.executable, "bench/scale.py", "--sources", "3", "--sizes", "8", "--max-workers", "2", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "a/c =" in proc.stdout and "b/a =" in proc.stdout and "d/a =" in proc.stdout
    assert "(d) pandas+GX" in proc.stdout
    (result,) = json.loads(out.read_text(encoding="utf-8"))
    assert result["source_rows"] > 0 and result["prefect"] == "served"
    for run in ("full", "incremental", "floor", "pandas_gx"):
        assert result[run]["seconds"] > 0 and result[run]["peak_mib"] > 0
    assert {"extract", "normalize", "rules", "marts"} <= set(result["full_stages_s"])


def test_rules_bench_smoke(tmp_path):
    """bench/rules.py over the silver of a tiny city: a line per rule module."""
    from datetime import date

    from flows.registry import load_registry
    from flows.state import StateStore
    from flows.steps import RunSettings, new_run_id, process_source
    from simulator import simulate_city
    from warehouse.layout import Layout

    as_of = date(2026, 11, 29)
    simulate_city(tmp_path / "city", sources=3, projects_per_source=10, seed=5, as_of=as_of, workers=1)
    layout = Layout(tmp_path / "wh")
    layout.root.mkdir(parents=True)
    state = StateStore(layout.state_url)
    registry = load_registry(tmp_path / "city" / "sources.toml")
    for source in registry.sources:
        process_source(layout, state, source, as_of, new_run_id(as_of), RunSettings())
    state.dispose()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "rules.py"), "--sources", str(tmp_path / "city" / "sources.toml"),
         "--warehouse", str(layout.root), "--as-of", as_of.isoformat()],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    from expectations.rules import rule_modules

    for module in rule_modules():
        assert module.__name__.rsplit(".", 1)[-1] in proc.stdout
    assert "silver read in" in proc.stdout
