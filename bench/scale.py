"""Scale benchmark: the nightly run against the floor, side by side in one run.

For each size (96 sources × N projects each) it simulates a city, then measures, each as its own
process so wall time and peak memory (RSS) are the process's own:

  (a) full   — `qingfeng run` on a fresh warehouse (first night: everything is pulled);
  (b) incr   — the next night after 1% of the source rows changed (platform and legacy rows get a new
               change time; filedrop sources get a new delivery, which is a full snapshot by contract);
  (c) floor  — a minimal script that only reads the same source tables as fast as this machine
               allows and writes the same volume of Parquet;
  (d) pandas+GX — at the smallest size only (`--baseline`), the same night written the common way:
               `bench/baseline_pandas_gx.py` reads every table with pandas, normalizes it row by row and
               runs Great Expectations per table per source (contract checks and the rule thresholds).

It prints wall seconds, peak RSS, source rows per second, the per-stage seconds of (a) from the run
records, and the ratios a/c, b/a and d/a.

(a) and (b) run as a scheduled night does (`--prefect served`, the default): against a Prefect server
that is already up, as `qingfeng serve` keeps one; the benchmark starts it once, before measuring.
`--prefect temporary` measures `qingfeng run` alone, which starts Prefect's temporary server each time
(5–11 s here).

    .venv/bin/python bench/scale.py --sizes 100 1000 5000
    .venv/bin/python bench/scale.py --sources 3 --sizes 10        # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

AS_OF = date(2026, 11, 29)
QINGFENG = [sys.executable, "-m", "flows.cli"]


def measure(cmd: list[str], env: dict | None = None) -> dict:
    """Wall seconds and peak RSS (MiB) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return {"seconds": time.perf_counter() - t0, "peak_mib": usage.ru_maxrss / 1024}


def source_rows(city: Path) -> int:
    from flows.registry import load_registry

    total = 0
    for s in load_registry(city / "sources.toml").sources:
        if s.dialect == "filedrop":
            folder = Path(s.url)
            if folder.is_dir() and (days := sorted(p for p in folder.iterdir() if p.is_dir())):
                total += sum(max(0, len(f.read_bytes().splitlines()) - 1) for f in days[-1].glob("*.csv"))
        elif s.url.startswith("sqlite"):
            path = s.url.removeprefix("sqlite:///")
            if Path(path).is_file():
                con = sqlite3.connect(path)
                names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
                total += sum(con.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names)
                con.close()
    return total


def change_one_percent(city: Path, night: date) -> None:
    """Touch 1% of the rows of every SQL source; give every filedrop source the next delivery."""
    from flows.registry import load_registry
    from transforms.dialects import native_tables

    stamp = {"platform": f"{night.isoformat()}T01:00:00+08:00", "legacy": f"{night.isoformat()} 01:00:00"}
    for s in load_registry(city / "sources.toml").sources:
        if s.dialect == "filedrop":
            folder = Path(s.url)
            days = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
            if days:
                shutil.copytree(days[-1], folder / night.isoformat(), dirs_exist_ok=True)
            continue
        path = s.url.removeprefix("sqlite:///")
        if not Path(path).is_file():
            continue
        con = sqlite3.connect(path)
        present = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for t in native_tables(s.dialect).values():
            if t.change_column and t.native in present:
                con.execute(f'UPDATE "{t.native}" SET "{t.change_column}" = ? WHERE rowid % 100 = 0',
                            (stamp[s.dialect],))
        con.commit()
        con.close()


FLOOR_SCRIPT = r"""
import sqlite3, sys, io
from pathlib import Path
import pyarrow as pa, pyarrow.csv as pacsv, pyarrow.parquet as pq
sys.path.insert(0, sys.argv[3])
from flows.registry import load_registry
out = Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
for s in load_registry(Path(sys.argv[1])).sources:
    if s.dialect == "filedrop":
        folder = Path(s.url)
        days = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        for f in (days[-1].glob("*.csv") if days else []):
            data = f.read_bytes()
            text = data.decode("utf-8-sig") if data.startswith(b"\xef\xbb\xbf") else data.decode("gb18030", "replace")
            try:
                table = pacsv.read_csv(io.BytesIO(text.encode()), convert_options=pacsv.ConvertOptions(
                    column_types={}, strings_can_be_null=True), read_options=pacsv.ReadOptions(autogenerate_column_names=False))
            except pa.ArrowInvalid:
                continue
            pq.write_table(table, out / f"{s.id}-{f.stem}.parquet", compression="zstd")
        continue
    path = s.url.removeprefix("sqlite:///")
    if not Path(path).is_file():
        continue
    con = sqlite3.connect(path)
    for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
        cur = con.execute(f'SELECT * FROM "{name}"')
        cols = [d[0] for d in cur.description]
        rows = cur.fetchall()
        arrays = [pa.array([None if r[i] is None else str(r[i]) for r in rows], pa.string()) for i in range(len(cols))]
        pq.write_table(pa.table(arrays, names=cols), out / f"{s.id}-{name}.parquet", compression="zstd")
    con.close()
"""


def stage_seconds(warehouse: Path) -> dict[str, float]:
    from flows.state import StateStore
    from warehouse.layout import Layout

    state = StateStore(Layout(warehouse).state_url)
    records = state.run_records()
    state.dispose()
    first_run = records[0]["run_id"] if records else None
    out: dict[str, float] = {}
    for r in records:
        if r["run_id"] == first_run:
            out[r["stage"]] = out.get(r["stage"], 0.0) + r["seconds"]
    return out


def bench_size(tmp: Path, sources: int, projects: int, workers: int, baseline: bool = False,
               night_env: dict | None = None) -> dict:
    city, wh = tmp / f"city{projects}", tmp / f"wh{projects}"
    t0 = time.perf_counter()
    subprocess.run([*QINGFENG, "simulate", "--out", str(city), "--sources", str(sources), "--projects-per-source",
                    str(projects), "--seed", "7", "--as-of", AS_OF.isoformat()], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    simulate_s = time.perf_counter() - t0
    rows = source_rows(city)
    run = [*QINGFENG, "run", "--sources", str(city / "sources.toml"), "--warehouse", str(wh),
           "--max-workers", str(workers)]
    floor = measure([sys.executable, "-c", FLOOR_SCRIPT, str(city / "sources.toml"), str(tmp / f"floor{projects}"),
                     str(ROOT)])
    full = measure([*run, "--as-of", AS_OF.isoformat()], night_env)
    stages = stage_seconds(wh)
    # (d) reads the same first-night city as (a), before the 1% change below
    pandas_gx = measure([sys.executable, str(ROOT / "bench" / "baseline_pandas_gx.py"), "--sources",
                         str(city / "sources.toml"), "--out", str(tmp / f"baseline{projects}"),
                         "--as-of", AS_OF.isoformat()]) if baseline else None
    night2 = AS_OF + timedelta(days=1)
    change_one_percent(city, night2)
    incr = measure([*run, "--as-of", night2.isoformat()], night_env)
    out = {"sources": sources, "projects_per_source": projects, "source_rows": rows, "simulate_s": simulate_s,
           "full": full, "incremental": incr, "floor": floor, "full_stages_s": stages}
    if pandas_gx is not None:
        out["pandas_gx"] = pandas_gx
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", type=int, default=96)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000], help="projects per source")
    ap.add_argument("--max-workers", type=int, default=4)
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    ap.add_argument("--baseline", choices=("smallest", "all", "none"), default="smallest",
                    help="at which sizes to measure (d), the pandas + Great Expectations baseline")
    ap.add_argument("--prefect", choices=("served", "temporary"), default="served",
                    help="nights against a Prefect server already up (as scheduled), or `qingfeng run`'s "
                         "temporary server started by each night")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="qingfeng-scale-") as tmp, ExitStack() as stack:
        night_env = None
        if args.prefect == "served":
            from flows.serve import start_local_server

            server = start_local_server(home=Path(tmp) / "prefect")
            stack.callback(server.stop)
            night_env = {"PREFECT_API_URL": server.api_url}
        print(f"Prefect: {args.prefect}" + (f" ({night_env['PREFECT_API_URL']})" if night_env else ""))
        for n in args.sizes:
            baseline = args.baseline == "all" or (args.baseline == "smallest" and n == min(args.sizes))
            r = bench_size(Path(tmp), args.sources, n, args.max_workers, baseline=baseline, night_env=night_env)
            r["prefect"] = args.prefect
            results.append(r)
            a, b, c, d = r["full"], r["incremental"], r["floor"], r.get("pandas_gx")
            print(f"\n{args.sources} sources × {n} projects: {r['source_rows']:,} source rows "
                  f"(simulated in {r['simulate_s']:.0f} s)")
            print(f"{'':14}{'seconds':>10}{'peak MiB':>10}{'rows/s':>12}")
            rows = [("(a) full", a), ("(b) incr", b), ("(c) floor", c)] + ([("(d) pandas+GX", d)] if d else [])
            for name, m in rows:
                print(f"{name:14}{m['seconds']:>10.1f}{m['peak_mib']:>10.0f}{r['source_rows'] / m['seconds']:>12,.0f}")
            print(f"a/c = {a['seconds'] / c['seconds']:.2f}   b/a = {b['seconds'] / a['seconds']:.2f}"
                  + (f"   d/a = {d['seconds'] / a['seconds']:.2f}" if d else ""))
            print("stages of (a), seconds summed over sources: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["full_stages_s"].items())))
    if len(results) > 1:
        for small, big in zip(results, results[1:], strict=False):
            growth = big["source_rows"] / small["source_rows"]
            print(f"\n{small['projects_per_source']} → {big['projects_per_source']}: input × {growth:.1f}, "
                  f"time × {big['full']['seconds'] / small['full']['seconds']:.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
