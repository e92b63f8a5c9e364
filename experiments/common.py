"""Shared plumbing of the experiment scripts: train through an experiment config, evaluate, write results.

Every script trains with ``python -m infocatvae.train experiment=<name> trainer.max_epochs=<epochs>``
into ``logs/experiments/<name>_e<epochs>`` (a finished run is reused, so scripts that need the same
model share one run), evaluates its ``last.ckpt`` with ``python -m infocatvae.evaluate`` and writes
``experiments/results/<result>_e<epochs>.md`` with the measured numbers beside the paper's, and its PNGs
(``result_name``: the training length in every name, so that runs of other lengths never overwrite them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from infocatvae.hardware import bf16_flags, cpu_model
from infocatvae.loggers import read_scalars
from infocatvae.runs import last_ckpt, read_status

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
PAPER_EPOCHS = 600


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--epochs", type=int, default=PAPER_EPOCHS, help="training epochs (paper: 600)")
    p.add_argument(
        "--limit-train-batches",
        type=int,
        default=None,
        help="batches per epoch (default: all); only to shorten CPU runs",
    )
    p.add_argument("--log-dir", type=absolute, default=str(ROOT / "logs"), help="where training and evaluation runs go")
    p.add_argument(
        "--eval",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra overrides for infocatvae.evaluate (e.g. n_generated=2000)",
    )
    return p


def absolute(path: str) -> str:
    """``--log-dir`` as an absolute path: the script reads the runs from its own working folder, while the
    training and evaluation it starts run in the repository root."""
    return str(Path(path).expanduser().resolve())


def result_name(stem: str, args, tail: str = "") -> str:
    """``<stem>_e<epochs>[_b<batches>]<tail>``: a run's folder or a results file names the training length, so
    that a script run for another length writes beside the recorded results, not over them."""
    name = f"{stem}_e{args.epochs}"
    return name + (f"_b{args.limit_train_batches}" if args.limit_train_batches else "") + tail


def run_name(experiment: str, args, variant: str = "") -> str:
    """``<experiment>[_<variant>]_e<epochs>[_b<batches>]``: a variant names a run trained with extra overrides."""
    return result_name(f"{experiment}{'_' + variant if variant else ''}", args)


# what Hydra's override grammar reads as a plain string, for certain: any other value is quoted
HYDRA_PLAIN = re.compile(r"[A-Za-z0-9_/.+@%-]+")


def path_override(key: str, path: str | Path) -> str:
    """``key=path`` for Hydra's command line, the path quoted when its grammar would split or interpret it (a
    multirun job's folder holds ``=`` and ``,``); as it is otherwise, so that the stored overrides of earlier
    evaluations still match."""
    text = str(path)
    if HYDRA_PLAIN.fullmatch(text):
        return f"{key}={text}"
    # inside quotes Hydra reads a backslash as an escape only before a quote or the closing quote
    escaped = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, text).replace("'", "\\'")
    return f"{key}='{escaped}'"


def train_command(run_dir: Path, overrides: list[str], args) -> list[str]:
    """The ``infocatvae.train`` command of a script's run: ``overrides``, the script's epochs and batch limit,
    the run folder and log folder, no progress bar."""
    cmd = [
        sys.executable,
        "-m",
        "infocatvae.train",
        *overrides,
        f"trainer.max_epochs={args.epochs}",
        path_override("hydra.run.dir", run_dir),
        path_override("paths.log_dir", args.log_dir),
        "callbacks.progress_bar.refresh_rate=0",
    ]
    if args.limit_train_batches:
        cmd.append(f"trainer.limit_train_batches={args.limit_train_batches}")
    return cmd


def train(experiment: str, args, overrides: list[str] = (), variant: str = "") -> tuple[Path, float]:
    """Train (or reuse) the run of ``experiment`` (with ``overrides``, in a folder named by ``variant``); returns
    its folder and the training wall time (0 if reused)."""
    run_dir = Path(args.log_dir) / "experiments" / run_name(experiment, args, variant)
    cmd = train_command(run_dir, [f"experiment={experiment}", *overrides], args)
    done = read_status(run_dir).get("status") == "completed"
    start = time.perf_counter()
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    return run_dir, 0.0 if done else time.perf_counter() - start


def evaluate(run_dir: Path, purpose: str, overrides: list[str], args, ckpt: Path | None = None) -> tuple[dict, Path]:
    """Evaluate ``run_dir``'s last.ckpt (or ``ckpt``, one of its snapshots) into ``run_dir/eval/<purpose>``;
    returns metrics.json and that folder. An evaluation written after the checkpoint with the same overrides is
    reused (the scripts share runs and can be run again); any other is replaced."""
    out, ckpt = run_dir / "eval" / purpose, ckpt or last_ckpt(run_dir)
    cmd = [
        sys.executable,
        "-m",
        "infocatvae.evaluate",
        path_override("ckpt_path", ckpt),
        path_override("hydra.run.dir", out),
        path_override("paths.log_dir", args.log_dir),
        *overrides,
        *args.eval,
    ]
    # Hydra's overrides.yaml holds the task's overrides, without the hydra.* ones
    task_overrides = [a for a in cmd[3:] if not a.startswith("hydra.")]
    metrics, stored = out / "metrics.json", out / ".hydra" / "overrides.yaml"
    if (
        metrics.is_file()
        and stored.is_file()
        and metrics.stat().st_mtime > ckpt.stat().st_mtime
        and OmegaConf.to_container(OmegaConf.load(stored)) == task_overrides
    ):
        print(f"reusing {metrics}: same overrides, newer than the checkpoint", flush=True)
        return json.loads(metrics.read_text()), out
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    return json.loads((out / "metrics.json").read_text()), out


def copy_figure(src: Path, name: str) -> str:
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, RESULTS / name)
    return name


def hardware() -> str:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    return (
        f"{cpu_model()}, {platform.machine()} ({os.cpu_count()} cores, shared; bf16 flags: "
        f"{', '.join(bf16_flags()) or 'none'}), {device}; "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def epoch_times(run_dir: Path) -> tuple[float | None, float | None]:
    """(median seconds per epoch, seconds from the first to the last epoch end, pauses included),
    read from the wall times of the epoch-level training loss in TensorBoard."""
    events = read_scalars(run_dir, ["train/loss_epoch"]).get("train/loss_epoch")
    if not events:
        return None, None
    t = sorted(e.wall_time for e in events)
    gaps = [b - a for a, b in zip(t, t[1:])]
    return (statistics.median(gaps) if gaps else None), (t[-1] - t[0] if len(t) > 1 else None)


def training_time_line(run_dir: Path) -> str | None:
    """A run's training time as its TensorBoard epoch ends tell it, for the setup lines of a results file."""
    per_epoch, span = epoch_times(run_dir)
    if per_epoch is None:
        return None
    return (
        f"- training of `{run_dir.name}`: median {per_epoch:.0f} s per epoch; {span / 60:.0f} min from the first "
        "epoch's end to the last's (pauses included)"
    )


def train_seeds(args, runs: list[str]) -> str:
    """The ``seed`` the runs were trained with, read from their composed configs."""
    configs = [Path(args.log_dir) / "experiments" / r / ".hydra" / "config.yaml" for r in runs]
    seeds = sorted({OmegaConf.load(c).seed for c in configs if c.is_file()})
    return ", ".join(map(str, seeds)) or "n/a"


def setup_lines(args, seconds: float, runs: list[str], evaluation: dict) -> list[str]:
    """The setup section of a results file; ``evaluation``: one of its metrics.json (for the evaluation seed)."""
    reduced = args.epochs < PAPER_EPOCHS or args.limit_train_batches
    lines = [
        "## Setup",
        "",
        f"- epochs: **{args.epochs}**"
        + (f", {args.limit_train_batches} batches each" if args.limit_train_batches else "")
        + f" (paper: {PAPER_EPOCHS})",
        f"- seed: {train_seeds(args, runs)} (config `seed`), evaluation seed {evaluation.get('seed', 'n/a')}",
        f"- hardware: {hardware()}",
        f"- wall time of this command: {seconds / 60:.1f} min (training and evaluation; a run it finds completed, "
        "or an evaluation it finds up to date, is reused)",
        f"- runs: {', '.join(f'`{r}`' for r in runs)} under `{args.log_dir}/experiments/`",
        *[line for r in runs if (line := training_time_line(Path(args.log_dir) / "experiments" / r))],
        f"- command: `python {' '.join(sys.argv)}`",
    ]
    if reduced:
        lines += [
            "",
            "**Reduced run.** These numbers come from a short CPU run, far from the paper's 600 epochs; "
            "they check that the pipeline works end to end and are not a reproduction of the paper's values.",
        ]
    return lines


def full_run_note(script: str) -> list[str]:
    return [
        "",
        "## Full run",
        "",
        "On a GPU, for the paper's 600 epochs (Table 1's density protocol is the paper's; see README):",
        "",
        f"    export INFOCATVAE_DATA_DIR=/path/to/data && python experiments/{script} --epochs 600",
        "",
    ]


def write(name: str, lines: list[str]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    print(f"wrote {path}")
    return path


def usage_line(m: dict) -> str:
    """Each category's share of the test images (row c of Figures 3 and 4 is category c) and their perplexity."""
    if "category_usage" not in m:  # a reused evaluation from before they were measured (commit 7715984)
        return "Shares of the test images per category: not in this evaluation (older); delete its metrics.json."
    shares = ", ".join(f"{u:.3f}" for u in m["category_usage"])
    return (
        f"Share of the test images per category (argmax q(c|x); category 0 first): {shares}; "
        f"`usage_perplexity` {m['usage_perplexity']:.2f} of K = {m['K']}."
    )


def fmt(v, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)
