"""Figure 4: the λ variation. InfoCatVAE, K = 10, λ = 2, on FashionMNIST; row c decodes the block mean of
category c (eq. 8) scaled by λ' = 0, 1, ..., 9.

    python experiments/fig4.py --epochs 600
"""

from __future__ import annotations

import time

import common

EXP = "fig34_infocatvae_fashion"


def main() -> None:
    args = common.parser(__doc__).parse_args()
    start = time.perf_counter()
    run_dir, _ = common.train(EXP, args)
    m, out = common.evaluate(run_dir, "figures", ["kde.enabled=false", "parzen.enabled=false"], args)
    fig = common.copy_figure(out / "fig4_lambda.png", common.result_name("fig4_fashion", args, ".png"))
    samples = common.copy_figure(out / "samples.png", common.result_name("fig4_fashion", args, "_samples.png"))
    seconds = time.perf_counter() - start
    lines = [
        "# Figure 4: varying λ of the prior means (FashionMNIST)",
        "",
        "Row c decodes λ'·e_c, the unit block of category c in eq. (8), for λ' = 0, 1, …, 9 (the model was "
        'trained with λ = 2, so column 2 is decode(µ_c)). Paper: the variation has an "emptying" effect '
        "(shoes into sandals, sleeves into straps).",
        "",
        f"![lambda variation]({fig})",
        "",
        "Class-conditional samples of the same model:",
        "",
        f"![samples]({samples})",
        "",
        f"Test clustering accuracy {common.fmt(m['cluster_acc'], 3)} ({m['cluster_acc_mapping']}), "
        f"NMI {common.fmt(m['nmi'], 3)}, ARI {common.fmt(m['ari'], 3)}, `info_ce` {common.fmt(m['info_ce'], 3)}.",
        common.usage_line(m),
        "",
        *common.setup_lines(args, seconds, [common.run_name(EXP, args)], m),
        *common.full_run_note("fig4.py"),
    ]
    common.write(common.result_name("fig4", args), lines)


if __name__ == "__main__":
    main()
