"""``python -m tests.chaos --runs 1000 [--faults mixed|all-each|KIND,KIND...] [--workers 6] [--seed N]
[--json out.json] [--markdown out.md]``: run fault-injection campaigns and print one summary row each.
Exit status 1 if any invariant was violated."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import FrameType

from tests.chaos.campaign import CampaignConfig, CampaignResult, campaigns_for, run_campaign
from tests.chaos.faults import FAULTS
from tests.chaos.report import as_json, markdown, print_summary
from tests.chaos.workload import Workload


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    p.add_argument("--runs", type=int, default=100, help="runs per campaign (default 100; 1000 = the full one)")
    p.add_argument("--faults", default="mixed",
                   help=f"mixed (all at once), all-each (each alone, then mixed), or a list of: {','.join(FAULTS)} "
                        "(pg-partition, an extra fault, is only run when named)")
    p.add_argument("--workers", type=int, default=6,
                   help="worker processes (default 6: the workload needs ~8 s of bodies per run, so 1 run/s wants more "
                        "than 8 pool processes to keep up)")
    p.add_argument("--concurrency", type=int, default=2, help="pool processes per worker (default 2)")
    p.add_argument("--masters", type=int, default=1, help="master processes (default 1)")
    p.add_argument("--rate", type=float, default=1.0, help="runs started per second (default 1)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--lock-seconds", type=float, default=40.0, help="how long the table lock is held (default 40)")
    p.add_argument("--slow-seconds", type=float, default=3.0, help="duration of the workflow's slow task")
    p.add_argument("--crash-probability", type=float, default=0.05,
                   help="TIDEFLOW_FAULT_CRASH_BEFORE_PUBLISH of the masters in master-kill campaigns")
    p.add_argument("--no-code", action="store_true", help="no chaos-code runs beside the mixed ones")
    p.add_argument("--min-window", type=float, default=0.0, help="inject faults for at least this many seconds")
    p.add_argument("--json", type=Path, help="write the results as JSON here")
    p.add_argument("--markdown", type=Path, help="write the summary table as Markdown here")
    p.add_argument("--plain", action="store_true", help="plain text table (no rich)")
    p.add_argument("--keep", action="store_true", help="keep each campaign's work dir (always kept on failure)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_sigterm(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_sigterm)
    base = CampaignConfig(
        name="mixed", faults=(), runs=args.runs, rate=args.rate, workers=args.workers,
        concurrency=args.concurrency, masters=args.masters, seed=args.seed, min_window=args.min_window,
        lock_seconds=args.lock_seconds, crash_before_publish=args.crash_probability,
        workload=Workload(slow_seconds=args.slow_seconds, code=not args.no_code), keep_workdir=args.keep)
    try:
        configs = campaigns_for(args.faults, base)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    results: list[CampaignResult] = []
    t0 = time.monotonic()
    for cfg in configs:
        cfg = replace(cfg, lock_runs=max(3, min(20, cfg.runs // 10)))
        result = run_campaign(cfg)
        results.append(result)
        print_summary([result], rich=not args.plain)
    if len(results) > 1:
        print(f"\n===== {len(results)} campaigns in {time.monotonic() - t0:.0f}s =====")
        print_summary(results, rich=not args.plain)
    if args.json:
        args.json.write_text(as_json(results))
    if args.markdown:
        args.markdown.write_text(markdown(results))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
