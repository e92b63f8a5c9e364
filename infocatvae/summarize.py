"""One table for a sweep: ``python -m infocatvae.summarize <sweep folder> [--sort val/cluster_acc]``
(console script ``infocatvae-summarize``).

Each job folder of the sweep (any folder below it holding ``status.json`` or
``.hydra/overrides.yaml``) gives one row: its overrides (one column per swept key), its status
(completed, failed, interrupted, running, or "not started"), its final validation metrics and,
for a failed job, its error. The table is printed as Markdown and written to ``summary.md`` and
``summary.csv`` in the sweep folder.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

import yaml

STATUS_FILE = "status.json"
METRIC_ORDER = ("val/loss", "val/recon", "val/kl_cat", "val/kl_cont", "val/info", "val/cluster_acc", "val/nmi")


def find_jobs(sweep_dir: Path) -> list[Path]:
    """Job folders under ``sweep_dir``: folders with a status.json or a .hydra/overrides.yaml."""
    found = {p.parent for p in sweep_dir.rglob(STATUS_FILE)}
    found |= {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")}
    # the sweep folder's own .hydra (hydra writes multirun.yaml there) is not a job
    return sorted(p for p in found if ".submitit" not in p.parts)


def _split_override(item: str) -> tuple[str, str]:
    key, _, value = item.partition("=")
    return key.lstrip("+~"), value


def read_job(job_dir: Path) -> dict[str, Any]:
    """One row: ``job``, the overrides, ``status``, ``epoch``, the val/test metrics, ``error``."""
    row: dict[str, Any] = {"job": str(job_dir)}
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides: list[str] = []
    if overrides_file.is_file():
        try:
            overrides = [str(o) for o in (yaml.safe_load(overrides_file.read_text()) or [])]
        except (OSError, yaml.YAMLError) as err:
            row["error"] = f"unreadable overrides: {err}"
    row["overrides"] = " ".join(overrides)
    for item in overrides:
        key, value = _split_override(item)
        row[f"override:{key}"] = value
    status: dict[str, Any] = {}
    try:
        status = json.loads((job_dir / STATUS_FILE).read_text())
        row["status"] = status.get("status", "unknown")
    except FileNotFoundError:
        row["status"] = "not started"
    except (OSError, ValueError) as err:
        row["status"] = "unknown"
        row["error"] = f"unreadable status.json: {err}"
    row["epoch"] = status.get("epoch")
    for key, value in (status.get("metrics") or {}).items():
        if key.startswith(("val/", "test/")):
            row[key] = value
    if status.get("error"):
        row["error"] = " ".join(str(status["error"]).split())[:400]
    return row


def _metric_columns(rows: list[dict[str, Any]]) -> list[str]:
    present = {k for r in rows for k in r if k.startswith(("val/", "test/"))}
    ordered = [m for m in METRIC_ORDER if m in present]
    return ordered + sorted(present - set(ordered))


def columns(rows: list[dict[str, Any]]) -> list[str]:
    override_cols = sorted({k for r in rows for k in r if k.startswith("override:")})
    return override_cols + ["status", "epoch"] + _metric_columns(rows) + ["error", "job"]


def sort_rows(rows: list[dict[str, Any]], metric: str | None, descending: bool | None) -> list[dict[str, Any]]:
    """Rows by ``metric`` (jobs without it last); losses ascending and scores descending by default."""
    if not metric:
        return rows
    if descending is None:
        descending = not metric.rsplit("/", 1)[-1].startswith(("loss", "recon", "kl"))

    def key(r: dict[str, Any]):
        v = r.get(metric)
        missing = not isinstance(v, (int, float)) or math.isnan(v)
        return (missing, 0.0 if missing else (-v if descending else v))

    return sorted(rows, key=key)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def to_markdown(rows: list[dict[str, Any]], cols: list[str]) -> str:
    head = [c.removeprefix("override:") for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)).replace("|", "\\|") for c in cols) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict[str, Any]], cols: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([c.removeprefix("override:") for c in cols])
    for r in rows:
        writer.writerow(["" if r.get(c) is None else r.get(c) for c in cols])
    return buf.getvalue()


def summarize(sweep_dir: str | Path, sort: str | None = None, descending: bool | None = None
              ) -> tuple[list[dict[str, Any]], list[str]]:
    """Read every job of the sweep, write ``summary.md`` and ``summary.csv`` there; returns (rows, columns)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep folder {sweep_dir} does not exist")
    rows = sort_rows([read_job(j) for j in find_jobs(sweep_dir)], sort, descending)
    if not rows:
        raise FileNotFoundError(f"no job folders (with status.json or .hydra/overrides.yaml) under {sweep_dir}")
    cols = columns(rows)
    (sweep_dir / "summary.md").write_text(to_markdown(rows, cols))
    (sweep_dir / "summary.csv").write_text(to_csv(rows, cols))
    return rows, cols


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infocatvae-summarize", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", help="the sweep folder (hydra.sweep.dir), e.g. logs/train/multirun/paper")
    parser.add_argument("--sort", metavar="METRIC", help="sort by this column, e.g. val/cluster_acc or val/loss")
    order = parser.add_mutually_exclusive_group()
    order.add_argument("--ascending", dest="descending", action="store_false", default=None,
                       help="smallest first (the default for losses)")
    order.add_argument("--descending", dest="descending", action="store_true",
                       help="largest first (the default for scores such as cluster_acc and nmi)")
    args = parser.parse_args(argv)
    try:
        rows, cols = summarize(args.sweep_dir, args.sort, args.descending)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.sort and all(args.sort not in r for r in rows):
        print(f"warning: no job has the metric {args.sort!r}; columns: {', '.join(cols)}", file=sys.stderr)
    print(to_markdown(rows, cols), end="")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(f"\n{len(rows)} jobs ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}); "
          f"written to {Path(args.sweep_dir) / 'summary.md'} and summary.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
