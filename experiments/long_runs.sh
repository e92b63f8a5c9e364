#!/usr/bin/env bash
# The long runs behind experiments/results/ (Table 1, Figures 3-5, the authors'-code preset), one
# after another on one machine (two trainings at once on 2 cores each run 6-13x slower).
#   INFOCATVAE_DATA_DIR=../shared/data nohup bash experiments/long_runs.sh /var/tmp/infocatvae > long_runs.log 2>&1 &
# Running it again resumes each run from its last.ckpt and skips the finished ones. Each run keeps a
# snapshot every 5 epochs (epochNNNN.ckpt) for experiments/convergence.py. The folder names follow
# experiments/common.py, so table1.py, fig3.py, ... with the same --epochs and --log-dir reuse them.
# With a second argument 600, it trains instead the runs at the paper's 600 epochs: Table 1's three rows and
# the FashionMNIST InfoCatVAE of Figures 3 and 4 (1.8 to 2.3 h each measured on 2 CPU cores), then Figure 5's
# three recurrent models (11 to 15 h each there: a CatVAE epoch 65-70 s, an InfoCatVAE one 85-88 s, float32),
# first with the Bernoulli likelihood (the reading under which a clustering can pay: experiments/loss_scale.py;
# `fig5.py --likelihood bernoulli`), then with appendix C's squared error as the configs have it (`fig5.py`):
#   INFOCATVAE_DATA_DIR=../shared/data nohup bash experiments/long_runs.sh /var/tmp/infocatvae 600 > long_runs_600.log 2>&1 &
set -u
cd "$(dirname "$0")/.."
L=${1:-logs}
PY=${PYTHON:-.venv/bin/python}
run() {  # experiment epochs run-name [overrides...]; the order of experiments/common.py's train_command
  local exp=$1 ep=$2 name=$3
  shift 3
  echo "=== $(date -u +%FT%TZ) start $name"
  "$PY" -m infocatvae.train "experiment=$exp" "$@" "trainer.max_epochs=$ep" "hydra.run.dir=$L/experiments/$name" \
      "paths.log_dir=$L" callbacks.progress_bar.refresh_rate=0
  local rc=$?  # before the line below: its $(date) would reset $? to 0
  echo "=== $(date -u +%FT%TZ) end $name rc=$rc"
}
if [ "${2:-}" = 600 ]; then
  run table1_aae 600 table1_aae_e600
  run table1_catvae 600 table1_catvae_e600
  run table1_infocatvae 600 table1_infocatvae_e600
  run fig34_infocatvae_fashion 600 fig34_infocatvae_fashion_e600
  run fig5_infocatvae 600 fig5_infocatvae_bernoulli_e600 model.likelihood=bernoulli
  run fig5_catvae 600 fig5_catvae_bernoulli_e600 model.likelihood=bernoulli
  run fig5_free_catvae 600 fig5_free_catvae_bernoulli_e600 model.likelihood=bernoulli
  run fig5_infocatvae 600 fig5_infocatvae_e600
  run fig5_catvae 600 fig5_catvae_e600
  run fig5_free_catvae 600 fig5_free_catvae_e600
  exit 0
elif [ -n "${2:-}" ]; then
  echo "long_runs.sh: the second argument may only be 600 (the paper's epochs), got '$2'" >&2
  exit 2
fi
run table1_infocatvae 100 table1_infocatvae_e100
run table1_catvae 100 table1_catvae_e100
run table1_aae 100 table1_aae_e100
run fig34_infocatvae_fashion 50 fig34_infocatvae_fashion_e50
run authors_code 50 authors_code_infocatvae_e50 model=infocatvae callbacks.snapshots.every_n_epochs=5
run authors_code 50 authors_code_catvae_e50 model=catvae callbacks.snapshots.every_n_epochs=5
run fig5_infocatvae 10 fig5_infocatvae_e10
run fig5_catvae 10 fig5_catvae_e10
run fig5_free_catvae 10 fig5_free_catvae_e10
