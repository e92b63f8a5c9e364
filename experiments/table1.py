"""Table 1 (section 10): log-likelihood of 10K generated samples under a Gaussian KDE of the 60K MNIST
training images (bandwidth by 5-fold cross-validated grid search), for the AAE (K = 1), CatVAE (K = 10)
and InfoCatVAE (K = 10); also the Parzen test log-likelihood of Goodfellow et al. / Makhzani et al.

    python experiments/table1.py --epochs 600
"""

from __future__ import annotations

import time

import common

PAPER = {
    "table1_aae": ("Adversarial autoencoder (K = 1)", 95.5),
    "table1_catvae": ("CatVAE (K = 10)", 111.2),
    "table1_infocatvae": ("InfoCatVAE (K = 10)", 113.8),
}


def parzen_split(m: dict) -> str:
    """Where an evaluation's Parzen bandwidth was chosen, from its metrics.json."""
    n, (size, images) = (
        m["parzen_n_valid"],
        (
            (m["parzen_val_size"], "validation images the model never trained on")
            if m["parzen_bandwidth_split"] == "val"
            else (60000, "training images")
        ),
    )
    return f"the {size:,} {images}" if n >= size else f"{n:,} of the {size:,} {images}"


def main() -> None:
    args = common.parser(__doc__).parse_args()
    start = time.perf_counter()
    rows, figs = [], []
    for exp, (label, paper) in PAPER.items():
        run_dir, _ = common.train(exp, args)
        m, out = common.evaluate(run_dir, "table1", ["info.enabled=false"], args)
        rows.append(
            f"| {label} | {paper} | {common.fmt(m['kde_ll'])} ± {common.fmt(m['kde_ll_sem'])} | "
            f"{m['kde_bandwidth']} | {common.fmt(m['parzen_test_ll'])} ± {common.fmt(m['parzen_test_ll_sem'])} | "
            f"{m['parzen_bandwidth']} | {common.fmt(m['test_recon'], 1)} |"
        )
        figs.append(common.copy_figure(out / "samples.png", common.result_name(exp, args, "_samples.png")))
        last = m
    seconds = time.perf_counter() - start
    lines = [
        "# Table 1: log-likelihood of generated samples (MNIST)",
        "",
        "| model | paper LL | measured `kde_ll` (± s.e.) | h | `parzen_test_ll` (± s.e.) | h | test recon |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "`kde_ll` is the paper's protocol: a Gaussian KDE fitted on the 60K training images, its bandwidth h "
        f"chosen by {last['kde_folds']}-fold cross-validated grid search over those {last['kde_fit_size']} "
        f"(grid and held-out scores: {last['kde_cv_scores']}), then the mean log-density of "
        f"{last['n_generated']} generated samples (c uniform, z ~ p(z|c), decoded). "
        "`parzen_test_ll` is the protocol of Goodfellow et al. (2014) and Makhzani et al. (2015): the density is "
        f"fitted on the generated samples, h chosen on {parzen_split(last)}, and the {last['n_test']:,} test images "
        "are scored. "
        "The two protocols measure different things and are not comparable with each other.",
        "",
        "The paper computed its numbers with scikit-learn's `KernelDensity`; ours are computed in torch "
        "(`infocatvae.kde.kde_score_samples`). On 784-dimensional pixels scikit-learn's tree gives "
        "values that are off by hundreds of nats for points far from every training image (every kernel "
        "underflows; see `tests/test_metrics.py`), so the paper's numbers may carry that error.",
        "",
        f"KDE search time (once per data set, cached): {common.fmt(last['kde_cv_seconds'], 0)} s when run "
        f"(cached: {last['kde_cv_cached']}); scoring {last['n_generated']} samples against 60K: "
        f"{common.fmt(last['kde_score_seconds'], 0)} s. When the search came from the cache, its cost is the "
        "`kde_protocol` record of [bench.md](bench.md) (the same call on the same data).",
        "",
        "Samples (one row per category; the AAE has one category):",
        "",
        *[f"![{f}]({f})" for f in figs],
        "",
        *common.setup_lines(args, seconds, [common.run_name(e, args) for e in PAPER], last),
        *common.full_run_note("table1.py"),
    ]
    common.write(common.result_name("table1", args), lines)


if __name__ == "__main__":
    main()
