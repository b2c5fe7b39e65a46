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
    assert result["source_rows"] > 0
    for run in ("full", "incremental", "floor", "pandas_gx"):
        assert result[run]["seconds"] > 0 and result[run]["peak_mib"] > 0
    assert {"extract", "normalize", "rules", "marts"} <= set(result["full_stages_s"])
