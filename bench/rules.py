"""Per-rule cost: seconds and peak memory of each rule over a warehouse's silver, one rule at a time.

The cross-source stage of a night holds the city's silver (but evidence and metrics, which the rules read
source by source) and runs every rule over it; this says which rule costs what. Peak memory is sampled (every 20 ms) above what the process held before the rule.

    .venv/bin/python bench/rules.py --sources city/sources.toml --warehouse wh [--as-of D] [--only F6 T4]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


class PeakSampler:
    def __init__(self) -> None:
        self.peak = rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mib())
            time.sleep(0.02)

    def reset(self) -> float:
        self.peak = rss_mib()
        return self.peak

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", type=Path, required=True, help="the city's sources.toml")
    ap.add_argument("--warehouse", type=Path, required=True, help="a warehouse whose silver a night has written")
    ap.add_argument("--as-of", type=date.fromisoformat, default=date(2026, 11, 29))
    ap.add_argument("--only", nargs="*", help="rule ids (default: every T and F rule)")
    args = ap.parse_args()

    from expectations.gx_runner import Validator
    from expectations.rules import rule_modules
    from expectations.rules.base import RuleContext, run_rule
    from expectations.settings import rule_params
    from flows.registry import load_registry
    from warehouse.layout import Layout
    from warehouse.silver import CitySilver

    sampler = PeakSampler()
    t0 = time.perf_counter()
    registry = load_registry(args.sources)
    layout, source_ids = Layout(args.warehouse), [s.id for s in registry.sources]
    silver = CitySilver.load(layout, source_ids)  # evidence is read source by source, by the rules
    rows = {k: v.height for k, v in silver.items()}
    print(f"silver read in {time.perf_counter() - t0:.1f} s, process at {rss_mib():.0f} MiB: "
          + ", ".join(f"{k} {n:,}" for k, n in rows.items()))
    ctx = RuleContext(silver, args.as_of)
    validator = Validator()
    print(f"{'rule module':30}{'features s':>11}{'GX+flags s':>11}{'peak +MiB':>10}{'judged':>10}{'flags':>8}")
    for module in rule_modules():
        if args.only and module.RULE_ID not in args.only:
            continue
        params = rule_params(module.RULE_ID, module.PARAMS)
        base = sampler.reset()
        t0 = time.perf_counter()
        judged = module.features(ctx, params).height
        t1 = time.perf_counter()
        flags = run_rule(module, ctx, validator, params).height  # features again, then GX
        t2 = time.perf_counter()
        gx_s = max(0.0, (t2 - t1) - (t1 - t0))
        print(f"{module.__name__.rsplit('.', 1)[-1]:30}{t1 - t0:>11.2f}{gx_s:>11.2f}{sampler.peak - base:>10.0f}"
              f"{judged:>10,}{flags:>8,}", flush=True)
    sampler.stop()


if __name__ == "__main__":
    main()
