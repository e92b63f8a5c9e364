"""One table for a sweep: ``python -m infocatvae.summarize <sweep folder> [--sort val/cluster_acc]``
(console script ``infocatvae-summarize``).

Each job folder of the sweep (any folder below it holding ``status.json`` or
``.hydra/overrides.yaml``) gives one row: its overrides (one column per swept key), its status
(completed, failed, interrupted, running, killed: running in its status.json but held by no job,
or "not started"), its final validation metrics and, for a failed job, its error. The table is printed
as Markdown and written to ``summary.md`` and ``summary.csv`` in the sweep folder.

Seeds: jobs that differ only in ``seed`` (or, with ``--group-by KEY,...``, that share the values
of those override keys) form a group, and a second table gives per group the number of jobs, the
number ``n`` of completed ones, and each final metric of the completed jobs as mean ± sample
standard deviation (n − 1 in the denominator; the mean alone when n = 1; ``(m)`` after a cell
when only m < n of them have that metric). It is printed, and written to ``summary_groups.md`` and
``summary_groups.csv`` (columns ``<metric>``, ``<metric>_std``, ``<metric>_n``), whenever some
group holds more than one job or ``--group-by`` is given; ``--sort`` orders it by the means.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

from infocatvae.runs import STATUS_FILE, is_locked, read_status

METRIC_ORDER = (
    "val/loss",
    "val/recon",
    "val/kl_cat",
    "val/kl_cont",
    "val/info",
    "val/marginal",
    "val/cluster_acc",
    "val/nmi",
    "val/ari",
    "val/usage_perplexity",
)
SEED_KEY = "seed"
# the logged values that are better when higher (``--sort`` lists them first); every loss term is better lower
# (not the AAE's disc_acc: its discriminator should be fooled, near 0.5)
HIGHER_IS_BETTER = frozenset({"cluster_acc", "nmi", "ari", "usage_perplexity"})


def find_jobs(sweep_dir: Path) -> list[Path]:
    """Job folders under ``sweep_dir``: folders with a status.json or a .hydra/overrides.yaml that lie in no
    other such folder (``infocatvae.evaluate`` writes its own .hydra into ``<job>/eval/<name>/``: not a job)."""
    found = {p.parent for p in sweep_dir.rglob(STATUS_FILE)}
    found |= {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")}
    # the sweep folder's own .hydra (hydra writes multirun.yaml there) is not a job
    found = {p for p in found if ".submitit" not in p.parts}
    return sorted(p for p in found if not any(parent in found for parent in p.parents))


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
        status = read_status(job_dir, strict=True)
        row["status"] = status.get("status", "unknown") if status else "not started"
    except (OSError, ValueError) as err:
        row["status"] = "unknown"
        row["error"] = f"unreadable status.json: {err}"
    if row["status"] == "running" and not is_locked(job_dir):
        row["status"] = "killed"
        status["error"] = status.get("error") or (
            "status.json says running, but no job holds the folder: killed (SIGKILL, out of memory, a lost node); "
            "its command resumes it from last.ckpt"
        )
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
    """Rows by ``metric`` (jobs without it last); by default the scores (``HIGHER_IS_BETTER``) descending and every
    other column (the loss terms: loss, recon, kl_*, info, marginal, gen, disc) ascending."""
    if not metric:
        return rows
    if descending is None:
        descending = metric.rsplit("/", 1)[-1] in HIGHER_IS_BETTER

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


def summarize(
    sweep_dir: str | Path, sort: str | None = None, descending: bool | None = None
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


def override_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The override keys of the jobs (``model.K``, ``seed``, ...), sorted."""
    return sorted({k.removeprefix("override:") for r in rows for k in r if k.startswith("override:")})


def default_group_by(rows: list[dict[str, Any]]) -> list[str]:
    """Every override key except ``seed``: jobs that differ only in their seed form one group."""
    return [k for k in override_keys(rows) if k != SEED_KEY]


def group_rows(rows: list[dict[str, Any]], group_by: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per distinct value of the ``group_by`` overrides (groups in the order of their first job):
    the keys' values, ``jobs`` (all the group's jobs), ``n`` (its completed jobs) and, for each val/test
    metric over the completed jobs with a finite value, ``<metric>`` (mean), ``<metric>_std`` (sample
    standard deviation, None for a single value) and ``<metric>_n``. Returns (rows, columns)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(f"override:{k}") for k in group_by), []).append(r)
    metrics = _metric_columns(rows)
    out = []
    for key, members in groups.items():
        done = [r for r in members if r.get("status") == "completed"]
        g: dict[str, Any] = {f"override:{k}": v for k, v in zip(group_by, key)}
        g.update(jobs=len(members), n=len(done))
        for m in metrics:
            values = [
                float(r[m])
                for r in done
                if isinstance(r.get(m), (int, float)) and not isinstance(r.get(m), bool) and math.isfinite(r[m])
            ]
            g[f"{m}_n"] = len(values)
            if values:
                g[m] = statistics.fmean(values)
                g[f"{m}_std"] = statistics.stdev(values) if len(values) > 1 else None
        out.append(g)
    cols = [f"override:{k}" for k in group_by] + ["jobs", "n"]
    cols += [c for m in metrics for c in (m, f"{m}_std", f"{m}_n")]
    return out, cols


def groups_to_markdown(groups: list[dict[str, Any]], cols: list[str]) -> str:
    """The group table of ``group_rows``' rows and columns, with one ``mean ± std`` column per metric
    (``(m)`` after it when only m < n of the completed jobs have the metric)."""
    group_by = [c.removeprefix("override:") for c in cols if c.startswith("override:")]
    metrics = cols[len(group_by) + 2 :: 3]  # each metric's mean column, then its _std and _n
    head = group_by + ["jobs", "n"] + metrics
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for g in groups:
        cells = [_fmt(g.get(f"override:{k}")) for k in group_by] + [str(g["jobs"]), str(g["n"])]
        for m in metrics:
            cell = ""
            if g.get(m) is not None:
                cell = _fmt(float(g[m])) + ("" if g.get(f"{m}_std") is None else f" ± {_fmt(float(g[f'{m}_std']))}")
                if g[f"{m}_n"] < g["n"]:
                    cell += f" ({g[f'{m}_n']})"
            cells.append(cell)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def check_group_by(rows: list[dict[str, Any]], group_by: list[str]) -> None:
    """A KeyError naming the ``group_by`` keys that no job overrides, and the keys that are overridden."""
    known = override_keys(rows)
    unknown = [k for k in group_by if k not in known]
    if unknown:
        raise KeyError(
            f"--group-by: no job overrides {', '.join(unknown)}; the overridden keys are: "
            f"{', '.join(known) or '(none)'}"
        )


def group_sizes(rows: list[dict[str, Any]], group_by: list[str]) -> list[int]:
    """The number of jobs in each group."""
    sizes: dict[tuple, int] = {}
    for r in rows:
        key = tuple(r.get(f"override:{k}") for k in group_by)
        sizes[key] = sizes.get(key, 0) + 1
    return list(sizes.values())


def summarize_groups(
    rows: list[dict[str, Any]],
    sweep_dir: str | Path,
    group_by: list[str] | None = None,
    sort: str | None = None,
    descending: bool | None = None,
) -> tuple[list[dict[str, Any]], list[str], str]:
    """Group the jobs (by ``group_by``, default every override but ``seed``), write ``summary_groups.md``
    and ``summary_groups.csv`` into ``sweep_dir``; returns (group rows, CSV columns, Markdown table)."""
    group_by = default_group_by(rows) if group_by is None else list(group_by)
    check_group_by(rows, group_by)
    groups, cols = group_rows(rows, group_by)
    groups = sort_rows(groups, sort, descending)
    table = groups_to_markdown(groups, cols)
    sweep_dir = Path(sweep_dir)
    (sweep_dir / "summary_groups.md").write_text(table)
    (sweep_dir / "summary_groups.csv").write_text(to_csv(groups, cols))
    return groups, cols, table


def _keys(text: str) -> list[str]:
    return [k.strip() for k in text.split(",") if k.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infocatvae-summarize", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", help="the sweep folder (hydra.sweep.dir), e.g. logs/train/multirun/paper")
    parser.add_argument("--sort", metavar="METRIC", help="sort by this column, e.g. val/cluster_acc or val/loss")
    order = parser.add_mutually_exclusive_group()
    order.add_argument(
        "--ascending",
        dest="descending",
        action="store_false",
        default=None,
        help="smallest first (the default for losses)",
    )
    order.add_argument(
        "--descending",
        dest="descending",
        action="store_true",
        help="largest first (the default for scores such as cluster_acc and nmi)",
    )
    parser.add_argument(
        "--group-by",
        metavar="KEYS",
        type=_keys,
        default=None,
        help="comma-separated override keys whose jobs form one group, e.g. model.K,model.lam "
        "(default: every override except seed); the mean ± std of each metric over a "
        "group's completed jobs is printed and written to summary_groups.md/.csv "
        "(without --group-by, only when some group holds several jobs, e.g. seeds)",
    )
    args = parser.parse_args(argv)
    try:
        rows, cols = summarize(args.sweep_dir, args.sort, args.descending)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    group_by = default_group_by(rows) if args.group_by is None else args.group_by
    try:
        check_group_by(rows, group_by)
    except KeyError as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 2
    if args.sort and all(args.sort not in r for r in rows):
        print(f"warning: no job has the metric {args.sort!r}; columns: {', '.join(cols)}", file=sys.stderr)
    print(to_markdown(rows, cols), end="")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(
        f"\n{len(rows)} jobs ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}); "
        f"written to {Path(args.sweep_dir) / 'summary.md'} and summary.csv"
    )
    if args.group_by is not None or max(group_sizes(rows, group_by)) > 1:
        groups, _, table = summarize_groups(rows, args.sweep_dir, group_by, args.sort, args.descending)
        print(
            f"\nBy {', '.join(group_by) or 'nothing (all jobs together)'}: mean ± standard deviation over the "
            f"completed jobs of each group (n)\n"
        )
        print(table, end="")
        print(f"\n{len(groups)} groups; written to {Path(args.sweep_dir) / 'summary_groups.md'} and summary_groups.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
