"""How the paper's metrics move with training: each run's kept snapshots (``epochNNNN.ckpt``, written
every 5 epochs by the experiment configs) evaluated at several epochs, plotted per model.

    python experiments/convergence.py --log-dir /var/tmp/infocatvae --epochs-at 10 25 50 100
    python experiments/convergence.py --log-dir /var/tmp/infocatvae --runs table1_aae_e600 \
        --epochs-at 100 200 300 400 500 600 --name convergence_e600

Reads the runs the other scripts trained (``<log-dir>/experiments/<run>/``), evaluates each snapshot
with ``python -m infocatvae.evaluate`` into ``<run>/eval/convergence_epochNNNN/`` (figures off; the KDE
search is cached; an evaluation there with the same overrides, newer than the snapshot, is reused), and writes
``experiments/results/<name>.md`` (``--name``, default ``convergence``: the numbers, with each run's
epochs, wall time and command) and ``<name>.png`` (``kde_ll``, ``info_ce_on_probs``, ``gen_agreement``,
``cluster_acc`` and ``test_elbo`` against epochs).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import common

from infocatvae.runs import read_status

RUNS = [
    "table1_aae_e100",
    "table1_catvae_e100",
    "table1_infocatvae_e100",
    "fig34_infocatvae_fashion_e50",
    "authors_code_catvae_e50",
    "authors_code_infocatvae_e50",
]
METRICS = ["kde_ll", "info_ce_on_probs", "gen_agreement", "cluster_acc", "test_elbo"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log-dir", type=common.absolute, default=str(common.ROOT / "logs"))
    p.add_argument("--runs", nargs="*", default=RUNS)
    p.add_argument("--epochs-at", nargs="*", type=int, default=[10, 25, 50, 100])
    p.add_argument("--eval", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--name",
        default="convergence",
        help="the results' file name: experiments/results/<name>.md and <name>.png (e.g. convergence_e600)",
    )
    args = p.parse_args()
    start = time.perf_counter()
    table: dict[str, dict[int, dict]] = {}
    notes = []
    for run in args.runs:
        run_dir = Path(args.log_dir) / "experiments" / run
        status = read_status(run_dir)
        snaps = {int(f.stem.removeprefix("epoch")): f for f in (run_dir / "checkpoints").glob("epoch*.ckpt")}
        wanted = sorted(e for e in snaps if e in args.epochs_at or e == max(snaps))
        if not wanted:
            print(f"skipping {run}: no snapshot", file=sys.stderr)
            continue
        for e in wanted:
            # a folder of its own (not evaluate's default eval/epochNNNN, which a quick look by hand may hold),
            # reused only when evaluated with the same overrides after the snapshot was written
            m, _ = common.evaluate(run_dir, f"convergence_epoch{e:04d}", ["figures.enabled=false"], args, snaps[e])
            table.setdefault(run, {})[e] = m
        per_epoch, span = common.epoch_times(run_dir)
        overrides = (run_dir / ".hydra" / "overrides.yaml").read_text().strip().replace("\n", " ")
        done = status.get("status") == "completed"
        state = (
            f"completed {status.get('epoch')} epochs"
            if done
            else f"in progress, latest snapshot after epoch {max(snaps)}"
        )
        notes.append(
            f"- `{run}`: {state} of "
            f"{status.get('max_epochs')}; {common.fmt(per_epoch, 1)} s per epoch (median), "
            f"{common.fmt(span / 3600 if span else None, 2)} h from the first to the last epoch "
            f"(pauses included); seed {common.train_seeds(args, [run])}; overrides: `{overrides}`"
        )
    if not table:
        sys.exit(
            f"convergence: no snapshot (checkpoints/epochNNNN.ckpt) in any of the runs {', '.join(args.runs)} "
            f"under {args.log_dir}/experiments/; pass --log-dir (where the scripts trained them) or --runs"
        )
    plot(table, common.RESULTS / f"{args.name}.png")
    rows = [
        f"| {run} | {e} | " + " | ".join(common.fmt(m.get(k), 3) for k in METRICS) + " |"
        for run, by_epoch in table.items()
        for e, m in sorted(by_epoch.items())
    ]
    lines = [
        "# Convergence: the paper's metrics against training epochs",
        "",
        f"![convergence]({args.name}.png)",
        "",
        "| run | epoch | " + " | ".join(f"`{k}`" for k in METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
        *rows,
        "",
        "## Runs",
        "",
        *notes,
        "",
        f"- hardware: {common.hardware()}",
        f"- wall time of this command: {(time.perf_counter() - start) / 60:.1f} min (a snapshot evaluated before "
        "by this script with the same overrides, in the run's eval/convergence_epochNNNN/, is read, not evaluated "
        "again)",
        f"- command: `python {' '.join(sys.argv)}`",
        "- each run was trained by `python -m infocatvae.train` with the overrides above and `hydra.run.dir` set to "
        "its folder (from `experiments/long_runs.sh` or the result's script, e.g. `experiments/table1.py`)",
    ]
    common.write(args.name, lines)


def plot(table: dict[str, dict[int, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # a panel per metric that some run has (the AAE alone has only kde_ll)
    keys = [k for k in METRICS if any(m.get(k) is not None for by_epoch in table.values() for m in by_epoch.values())]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.6), squeeze=False)
    axes = axes[0]
    for ax, key in zip(axes, keys):
        # one colour per run in every panel (a run without a metric, the AAE's info_ce, leaves no gap in the cycle)
        for i, (run, by_epoch) in enumerate(table.items()):
            pts = [(e, m[key]) for e, m in sorted(by_epoch.items()) if m.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=run, color=f"C{i}")
        ax.set_title(key)
        ax.set_xlabel("epoch")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
