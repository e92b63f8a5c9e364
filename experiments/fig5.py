"""Figure 5 (section 11): class-conditional samples on row-sequential MNIST with the GRU networks of
appendix C, from the free-prior recurrent CatVAE (left), the recurrent CatVAE (middle) and the recurrent
InfoCatVAE (right).

    python experiments/fig5.py --epochs 600
    python experiments/fig5.py --epochs 600 --likelihood bernoulli   # the other reading of appendix C's loss

Appendix C's loss read literally (``gaussian``, the configs' default) cannot pay for a clustering
(``loss_scale.py``); ``--likelihood bernoulli`` trains and evaluates the same models with the Bernoulli
likelihood in runs of their own (``<experiment>_bernoulli_e<epochs>``) and writes ``fig5_bernoulli_e<epochs>.md``.
"""

from __future__ import annotations

import time

import common

from infocatvae.losses import LIKELIHOODS

CONFIG_LIKELIHOOD = "gaussian"  # conf/net/gru.yaml's: appendix C's "sum of the mean squared error of each time step"
LOSS_NAMES = {"gaussian": "squared error", "bernoulli": "binary cross-entropy"}

RUNS = {
    "fig5_free_catvae": "free-prior recurrent CatVAE (left)",
    "fig5_catvae": "recurrent CatVAE (middle)",
    "fig5_infocatvae": "recurrent InfoCatVAE (right)",
}


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument(
        "--likelihood",
        choices=LIKELIHOODS,
        default=CONFIG_LIKELIHOOD,
        help=f"the reconstruction loss (default {CONFIG_LIKELIHOOD}: appendix C's, as the configs)",
    )
    args = p.parse_args()
    start = time.perf_counter()
    variant = "" if args.likelihood == CONFIG_LIKELIHOOD else args.likelihood
    overrides = [f"model.likelihood={args.likelihood}"] if variant else []
    suffix = f"_{variant}" if variant else ""
    reading = f" (not appendix C's: `model.likelihood={variant}`)" if variant else ""
    rows, body, collapsed = [], [], []
    for exp, label in RUNS.items():
        run_dir, _ = common.train(exp, args, overrides, variant)
        m, out = common.evaluate(run_dir, "fig5", ["kde.enabled=false", "parzen.enabled=false"], args)
        fig = common.copy_figure(out / "samples.png", common.result_name(f"{exp}{suffix}", args, "_samples.png"))
        rows.append(
            f"| {label} | {common.fmt(m['cluster_acc'], 3)} | {common.fmt(m['nmi'], 3)} | "
            f"{common.fmt(m['ari'], 3)} | {common.fmt(m['info_ce'], 3)} | {common.fmt(m['info_acc'], 3)} | "
            f"{common.fmt(m.get('gen_confidence'), 2)} | {common.fmt(m.get('gen_agreement'), 2)} | "
            f"{common.fmt(m.get('gen_distinct'), 0)} | {common.fmt(m['test_recon'], 2)} |"
        )
        body += [f"### {label}", "", f"![{exp}]({fig})", ""]
        usage = m.get("category_usage")  # (a low NMI alone is also q(c|x) spread evenly, whatever the digit)
        if usage is not None and max(usage) > 0.99:
            collapsed.append(label)
        elif usage is None and m["nmi"] < 0.01:  # a reused evaluation from before category_usage: NMI only
            collapsed.append(f"{label} (by NMI < 0.01: its evaluation has no category shares)")
    seconds = time.perf_counter() - start
    n_test = f"{m['n_test']:,}"  # the last run's (every run is evaluated with the same arguments)
    lines = [
        "# Figure 5: recurrent models on sequential MNIST",
        "",
        "Each image is a 28-step series of 28-pixel rows; GRU encoder and decoder (appendix C, Table 3), "
        f"{LOSS_NAMES[args.likelihood]} loss{reading}. "
        "One row of samples per category, z ~ p(z|c). The paper shows these samples only "
        "(no numbers): the fixed prior with information maximisation gives class-consistent rows, the free "
        f"prior does not. Measured on the {n_test} test images; the `gen_*` columns are the independent reader's "
        "(a classifier trained on the real MNIST training images, never by the model) reading of "
        f"{common.fmt(m.get('gen_n_per_category'))} samples per category: its mean confidence, the share of each "
        "category's samples that agree with that category's majority digit, and how many distinct digits the "
        f"{m['K']} categories produce:",
        "",
        "| model | `cluster_acc` | `nmi` | `ari` | `info_ce` | `info_acc` | `gen_confidence` | `gen_agreement` "
        f"| `gen_distinct` | test recon ({LOSS_NAMES[args.likelihood]}) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        *(
            [
                f"At {args.epochs} epochs, {', '.join(collapsed)}: more than 99 % of the test images in one "
                "category (`category_usage`). "
                "These samples are the models' real behaviour at this length, not the paper's figure.",
                "",
            ]
            if collapsed
            else []
        ),
        "What the samples show, as a person reads them, why (the training curves), and whether the paper's claim "
        "holds: the claims table of [README.md](README.md).",
        "",
        *body,
        *common.setup_lines(args, seconds, [common.run_name(e, args, variant) for e in RUNS], m),
        *common.full_run_note("fig5.py"),
    ]
    common.write(common.result_name(f"fig5{suffix}", args), lines)


if __name__ == "__main__":
    main()
