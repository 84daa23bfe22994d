"""Copy a GPU check's (or a sweep's) output into perf/results/<date>_<card>_<commit>/.

    python perf/save_results.py OUTDIR [--dest perf/results] [--name NAME] [--dry-run]

The date, card and commit come from the CSV's latest run (the first row of
that run): the date of its timestamp, a short card name ("NVIDIA H100 80GB
HBM3" -> "H100"), and its commit; where the run could not know its commit
(a copied tree without .git says "unknown"), the commit of this checkout is
used instead. Every plain file in OUTDIR is copied; an existing folder of
the same name gets a numbered sibling instead of being overwritten.
"""

from __future__ import annotations

import argparse
import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARDS = ("GB200", "B200", "H200", "H100", "H800", "A100", "A800", "A10G", "A10", "L40S", "L40", "L4", "V100", "T4")


def card_name(gpu: str) -> str:
    for card in CARDS:
        if re.search(rf"\b{card}\b", gpu):
            return card
    if "interpreter" in gpu or gpu.startswith("cpu"):
        return "cpu-interpreter"
    return re.sub(r"[^A-Za-z0-9]+", "-", gpu.replace("NVIDIA", "")).strip("-")[:24] or "unknown"


def local_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def folder_name(csv_path: Path) -> str:
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{csv_path} has no rows")
    run_id = rows[-1].get("run_id")
    first = next(r for r in rows if r.get("run_id") == run_id)
    date = (first.get("timestamp") or "unknown")[:10]
    commit = first.get("commit") or "unknown"
    if commit.startswith("unknown"):
        commit = local_commit()
    return f"{date}_{card_name(first.get('gpu', ''))}_{commit}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("outdir", help="the folder gpu_check.sh or tritonconv bench wrote")
    p.add_argument("--dest", default=str(ROOT / "perf" / "results"))
    p.add_argument("--name", default="", help="folder name (default <date>_<card>_<commit>)")
    p.add_argument("--dry-run", action="store_true", help="print where the files would go")
    args = p.parse_args(argv)
    src = Path(args.outdir)
    csv_path = src / "results.csv"
    if not csv_path.exists():
        print(f"no results.csv in {src}", file=sys.stderr)
        return 1
    name = args.name or folder_name(csv_path)
    dest = Path(args.dest) / name
    n = 2
    while dest.exists():
        dest = Path(args.dest) / f"{name}-{n}"
        n += 1
    files = sorted(f for f in src.iterdir() if f.is_file())
    if args.dry_run:
        print(f"would copy {len(files)} files to {dest}: {' '.join(f.name for f in files)}")
        return 0
    dest.mkdir(parents=True)
    for f in files:
        shutil.copy2(f, dest / f.name)
    print(f"copied {len(files)} files to {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
