"""The GPU checks of the speed issue as one prepared run, for a GPU lent for a few minutes.

Here, on a machine that reaches pip's registries::

    python -m experiments.gpu_check kit

fills ``.gpu_kit/`` (git-ignored): wheels of what a bare GPU machine's Python (3.12, torch and Lightning
installed, nothing to download) lacks, at the versions installed here (hydra-core, omegaconf, antlr4,
submitit, hydra-submitit-launcher: about 0.5 MB), and MNIST's four ``.gz`` files (12 MB). There, in a
copy of the repository with ``.gpu_kit/`` beside it::

    python3 -m experiments.gpu_check run OUT

installs the wheels into a temporary folder, unpacks MNIST, and runs, each under its own time limit and
all within ``--budget`` seconds (default 540):

1. ``train_eager``: a 5-epoch InfoCatVAE-MLP on MNIST, ``trainer=gpu trainer.precision=bf16-mixed``;
2. ``train_compiled``: the same with ``compile=true``;
3. ``bench``: ``python -m experiments.bench --device gpu --skip sweep`` (``make bench`` without the CPU
   sweep record), its records in ``OUT/bench.jsonl`` as they come.

``nvidia-smi`` samples the GPU's utilisation and memory every 0.2 s during each phase. ``OUT`` gets at most
eight flat files: ``summary.json`` (the machine; per training run its epoch times from the TensorBoard
events, train and validation losses per epoch, GPU utilisation; each phase's command, exit status and
wall time), ``<phase>.log`` and ``<phase>_gpu.csv``, ``bench.jsonl``. ``--smoke`` runs the same plumbing on
a CPU in about 30 s (``trainer=cpu``, two short epochs, no compiled run, the bench's baseline record
alone): what ``tests/test_experiments.py`` runs. Of the framework this imports only ``infocatvae.data``
and ``infocatvae.loggers`` (torch, Lightning and TensorBoard, which the GPU machine has, no Hydra); the
phases are subprocesses, so the wheels can be installed first.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from infocatvae.data import RAW_FILES, default_data_dir
from infocatvae.loggers import read_scalars

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / ".gpu_kit"
# what the GPU machine's image lacks of pyproject.toml's dependencies (the device tool's KINDS.md lists the
# image's packages); antlr4 4.9.3 (omegaconf's parser) is published as a source archive only, so it is built
WHEELS = ["hydra-core", "omegaconf", "antlr4-python3-runtime", "submitit", "hydra-submitit-launcher"]
SOURCE_ONLY = {"antlr4-python3-runtime"}
GPU_PYTHON = "3.12"
MNIST_FILES = [name for name, _ in RAW_FILES]


def make_kit(kit: Path) -> None:
    """The wheels (at this environment's versions) and MNIST's compressed files, into ``kit``."""
    wheels = kit / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for name in WHEELS:
        spec = f"{name}=={importlib.metadata.version(name)}"
        pip = [sys.executable, "-m", "pip"]
        if name in SOURCE_ONLY:  # pure Python: a wheel built here installs on any Python 3
            cmd = [*pip, "wheel", "--no-deps", "-q", "-w", str(wheels), spec]
        else:
            cmd = [*pip, "download", "--no-deps", "-q", "--only-binary=:all:", "--python-version", GPU_PYTHON]
            cmd += ["--implementation", "cp", "--platform", "manylinux2014_x86_64", "-d", str(wheels), spec]
        subprocess.run(cmd, check=True)
    raw = kit / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    src = Path(default_data_dir()) / "MNIST" / "raw"
    for f in MNIST_FILES:
        if not (src / f"{f}.gz").is_file():
            sys.exit(f"gpu_check kit: {src / f}.gz not found (set INFOCATVAE_DATA_DIR to the data folder)")
        shutil.copyfile(src / f"{f}.gz", raw / f"{f}.gz")
    size = sum(p.stat().st_size for p in kit.rglob("*") if p.is_file())
    print(f"{kit}: {len(list(wheels.glob('*.whl')))} wheels, MNIST; {size / 2**20:.1f} MiB")


def prepare(kit: Path, work: Path, env: dict[str, str]) -> dict[str, str]:
    """Installs the kit's wheels (if any) into ``work/site`` and unpacks its MNIST (if any) into ``work/data``;
    returns the environment the phases run in."""
    env = dict(env, PYTHONUNBUFFERED="1")
    paths = [str(ROOT)]
    wheels = sorted((kit / "wheels").glob("*.whl"))
    if wheels:
        site = work / "site"
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
        subprocess.run([*cmd, "--upgrade", "--target", str(site), *map(str, wheels)], check=True)
        paths.append(str(site))
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    raw = kit / "data" / "MNIST" / "raw"
    if raw.is_dir():
        dest = work / "data" / "MNIST" / "raw"
        dest.mkdir(parents=True, exist_ok=True)
        for f in MNIST_FILES:
            with gzip.open(raw / f"{f}.gz") as src, open(dest / f, "wb") as dst:
                shutil.copyfileobj(src, dst)
        env["INFOCATVAE_DATA_DIR"] = str(work / "data")
    return env


@contextlib.contextmanager
def gpu_sampler(csv: Path):
    """``nvidia-smi`` writing utilisation (%) and memory (MiB) every 0.2 s into ``csv`` while the block runs."""
    if shutil.which("nvidia-smi") is None:
        yield
        return
    query = "--query-gpu=timestamp,utilization.gpu,memory.used"
    with open(csv, "w") as f:
        proc = subprocess.Popen(["nvidia-smi", query, "--format=csv,noheader,nounits", "-lms", "200"], stdout=f)
        try:
            yield
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def gpu_usage(csv: Path) -> dict:
    """Mean and median utilisation and the most memory over the samples of ``csv`` (empty: no GPU)."""
    if not csv.is_file():
        return {}
    util, mem = [], []
    for line in csv.read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        with contextlib.suppress(ValueError, IndexError):
            util.append(float(parts[1]))
            mem.append(float(parts[2]))
    if not util:
        return {}
    return {
        "gpu_samples": len(util),
        "gpu_util_mean": round(statistics.mean(util), 1),
        "gpu_util_median": statistics.median(util),
        "gpu_mem_max_mib": max(mem),
    }


def run_summary(run_dir: Path, started: float) -> dict:
    """Per epoch: the seconds since the previous epoch's end (the first: since the command started, so with
    the process's start, the data's load and any compilation) and the logged losses, from TensorBoard."""
    series = read_scalars(run_dir, ["train/loss_epoch", "val/loss"])
    ends = [e.wall_time for e in series.get("train/loss_epoch", [])]
    seconds = [round(b - a, 3) for a, b in zip([started, *ends], ends)]
    epochs = [
        {
            "epoch": i + 1,
            "seconds": s,
            **{tag.split("/")[0] + "_loss": round(series[tag][i].value, 3) for tag in series if i < len(series[tag])},
        }
        for i, s in enumerate(seconds)
    ]
    return {"epochs": epochs, "median_epoch_s_after_first": statistics.median(seconds[1:]) if seconds[1:] else None}


def phases(smoke: bool, work: Path) -> list[tuple[str, list[str], float]]:
    """(name, command, time limit in seconds) of each phase."""
    py = [sys.executable]
    if smoke:
        trainer = [
            "trainer=cpu",
            "trainer.max_epochs=2",
            "trainer.limit_train_batches=10",
            "trainer.limit_val_batches=2",
        ]
        bench = ["--device", "cpu", "--baseline", "--rounds", "1", "--steps-mlp", "5", "--skip", "compile"]
    else:
        trainer = ["trainer=gpu", "trainer.precision=bf16-mixed", "trainer.max_epochs=5"]
        bench = ["--device", "gpu", "--skip", "sweep"]

    def train(name: str, *extra: str) -> list[str]:
        run = [f"hydra.run.dir={work / 'runs' / name}", f"paths.log_dir={work / 'runs'}"]
        run.append("callbacks.progress_bar.refresh_rate=0")  # a log of records, not of bars
        return [*py, "-m", "infocatvae.train", "model=infocatvae", "seed=0", *trainer, *extra, *run]

    out = [("train_eager", train("train_eager"), 150.0)]
    if not smoke:
        out.append(("train_compiled", train("train_compiled", "compile=true"), 200.0))
    out.append(("bench", [*py, "-m", "experiments.bench", *bench], 240.0))
    return out


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in _read("/proc/cpuinfo").splitlines() if "model name" in ln), "")
    info: dict = {"python": platform.python_version(), "processor": cpu or platform.machine(), "cpus": os.cpu_count()}
    if shutil.which("nvidia-smi"):
        res = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
        info["gpus"] = res.stdout.strip().splitlines()
    return info


def run(out: Path, kit: Path, work: Path, budget: float, smoke: bool) -> dict:
    t0 = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    # a machine kept warm between calls keeps /tmp: an earlier attempt's runs would be skipped as completed or
    # resumed, and their curves timed against this attempt's start
    shutil.rmtree(work / "runs", ignore_errors=True)
    env = prepare(kit, work, os.environ)
    summary: dict = {"machine": machine(), "smoke": smoke, "kit": str(kit) if kit.is_dir() else None, "phases": {}}
    # first, in seconds: an environment that cannot import the package stops here (its error in summary.json, no
    # file of its own: the device tool returns at most eight), not once in each long phase
    imports = [sys.executable, "-c", "import infocatvae.models, infocatvae.train, experiments.bench"]
    check = subprocess.run(imports, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    summary["import"] = {"rc": check.returncode, "stderr_tail": check.stderr[-3000:]}
    if check.returncode != 0:
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        print("import failed:", check.stderr[-3000:], flush=True)
        return summary
    for name, cmd, limit in phases(smoke, work):
        left = budget - (time.monotonic() - t0)
        if left < 20:
            summary["phases"][name] = {"skipped": f"{left:.0f} s of the budget left"}
            continue
        limit = min(limit, left)
        started, wall = time.time(), time.monotonic()
        # a training run's output in <name>.log; the bench's records (stdout) in bench.jsonl, the rest in bench.log
        log = open(out / f"{name}.log", "w")
        stdout = open(out / "bench.jsonl", "w") if name == "bench" else log
        with log, stdout, gpu_sampler(out / f"{name}_gpu.csv"):
            try:
                rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=stdout, stderr=log, timeout=limit).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        rec = {"command": " ".join(cmd), "rc": rc, "limit_s": round(limit), "wall_s": round(time.monotonic() - wall, 1)}
        rec.update(gpu_usage(out / f"{name}_gpu.csv"))
        run_dir = work / "runs" / name
        if name.startswith("train") and (run_dir / "tensorboard").is_dir():
            rec.update(run_summary(run_dir, started))
        summary["phases"][name] = rec
        (out / "summary.json").write_text(json.dumps(summary, indent=1))  # after each phase: kept if cut short
        print(name, json.dumps({k: v for k, v in rec.items() if k != "epochs"}), flush=True)
    summary["wall_s"] = round(time.monotonic() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    k = sub.add_parser("kit", help="fill .gpu_kit/ here: the wheels and MNIST the GPU machine lacks")
    k.add_argument("--kit", type=Path, default=KIT)
    r = sub.add_parser("run", help="the checks, on the GPU machine")
    r.add_argument("out", type=Path, help="folder for summary.json, the logs and bench.jsonl")
    r.add_argument("--kit", type=Path, default=KIT)
    r.add_argument("--work", type=Path, default=Path("/tmp/gpu_check"), help="wheels, data and runs (not OUT)")
    r.add_argument("--budget", type=float, default=540.0, help="seconds for all phases together")
    r.add_argument("--smoke", action="store_true", help="the same plumbing on a CPU, in about a minute")
    args = parser.parse_args()
    if args.verb == "kit":
        make_kit(args.kit)
    else:
        run(args.out, args.kit, args.work, args.budget, args.smoke)


if __name__ == "__main__":
    main()
