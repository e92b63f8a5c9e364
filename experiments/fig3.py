"""Figure 3: discrete interpolation between consecutive prior centroids µ_c -> µ_(c+1) for InfoCatVAE,
K = 10, λ = 2, on MNIST (left; the Table 1 InfoCatVAE run) and FashionMNIST (right; shared with Figure 4).

    python experiments/fig3.py --epochs 600
"""

from __future__ import annotations

import time

import common

RUNS = {"MNIST": "table1_infocatvae", "FashionMNIST": "fig34_infocatvae_fashion"}
NO_DENSITY = ["kde.enabled=false", "parzen.enabled=false"]


def main() -> None:
    args = common.parser(__doc__).parse_args()
    start = time.perf_counter()
    body = []
    for data, exp in RUNS.items():
        run_dir, _ = common.train(exp, args)
        m, out = common.evaluate(run_dir, "figures", NO_DENSITY, args)
        fig_name = common.result_name(f"fig3_{data.lower()}", args, ".png")
        body += [
            f"## {data} (`experiment={exp}`)",
            "",
            f"![interpolation]({common.copy_figure(out / 'fig3_interpolation.png', fig_name)})",
            "",
            f"Test clustering accuracy {common.fmt(m['cluster_acc'], 3)} ({m['cluster_acc_mapping']}), "
            f"NMI {common.fmt(m['nmi'], 3)}, `info_ce` {common.fmt(m['info_ce'], 3)}.",
            common.usage_line(m),
            "",
        ]
    seconds = time.perf_counter() - start
    lines = [
        "# Figure 3: discrete interpolation between the prior centroids",
        "",
        "Row c starts at decode(µ_c) (left column) and walks to µ_(c+1 mod K) in 9 equal steps: columns "
        "decode((1 − t) µ_c + t µ_(c+1)), t = 0, 1/9, …, 1. Paper: InfoCatVAE, K = 10, λ = 2, 600 epochs; "
        "each row then shows one class morphing into the next.",
        "",
        *body,
        *common.setup_lines(args, seconds, [common.run_name(e, args) for e in RUNS.values()], m),
        *common.full_run_note("fig3.py"),
    ]
    common.write(common.result_name("fig3", args), lines)


if __name__ == "__main__":
    main()
