"""Old code against new, in the same run: a benchmark module run alternately from another checkout (the code
before a change, with its own venv) and from this one, on the same servers, so that a refactor's cost is
measured against the machine's noise of the same hour, not against figures from another day.

    git worktree add --detach ../tideflow-base <commit>      # once; then create its .venv as usual
    .venv/bin/python -m bench.side_by_side --base ../tideflow-base --rounds 2 -- throughput --runs 100

Each round runs ``BASE/.venv/bin/python -m bench.MODULE ARGS`` in BASE, then the same here; every invocation
measures its own raw-Celery baseline, so each row's ``ratio`` is already relative to the same minute's baseline.
Prints one table: every row of every invocation with its side (base/new) and round, then the mean ratio per
system and side.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run(checkout: Path, module: str, args: list[str], out: Path) -> dict[str, Any]:
    python = checkout / ".venv" / "bin" / "python"
    subprocess.run([str(python), "-m", f"bench.{module}", *args, "--json", str(out)], cwd=checkout, check=True,
                   stdout=subprocess.DEVNULL)
    return dict(json.loads(out.read_text()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", type=Path, required=True, help="checkout of the code to compare against")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--column", default="ratio", help="the column to compare (default: ratio)")
    p.add_argument("module", help="bench module, e.g. throughput or latency")
    p.add_argument("args", nargs=argparse.REMAINDER, help="its arguments (after --)")
    a = p.parse_args()
    args = [x for x in a.args if x != "--"]
    rows: list[dict[str, Any]] = []
    title = ""
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(a.rounds):
            for side, checkout in (("base", a.base.resolve()), ("new", ROOT)):
                payload = run(checkout, a.module, args, Path(tmp) / f"{side}{rnd}.json")
                title = payload["title"]
                rows += [{"side": side, "round": rnd + 1, **r} for r in payload["rows"]]
    means: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in rows:
        if isinstance(r.get(a.column), int | float):
            means[(str(r["system"]), str(r["side"]))].append(float(r[a.column]))
    print(f"### side by side: {title}\n")
    print(f"`{' '.join(['python -m bench.side_by_side', *sys.argv[1:]])}`\n")
    print(f"| system | side | round | {a.column} |\n|---|---|---|---|")
    for r in rows:
        value = r.get(a.column)
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        print(f"| {r['system']} | {r['side']} | {r['round']} | {shown} |")
    print(f"\n| system | base mean {a.column} | new mean {a.column} | new / base |\n|---|---|---|---|")
    for system in dict.fromkeys(str(r["system"]) for r in rows):
        base, new = means.get((system, "base")), means.get((system, "new"))
        if base and new:
            b, n = sum(base) / len(base), sum(new) / len(new)
            print(f"| {system} | {b:.3g} | {n:.3g} | {n / b:.2f} |")


if __name__ == "__main__":
    main()
