#!/usr/bin/env bash
# The accelerated executor on a real GPU against TFF's local CPU runtime
# (docs/executors.md): 3 FedAlt rounds on `mini`, the same sampled clients and
# shuffles on both, then round times and metrics side by side.
#
#   tools/gpu_check.sh CACHE_DIR [OUT_DIR]
#
# CACHE_DIR holds a converted StackOverflow cache (stackoverflow.sqlite,
# .word_count, .tokens.npz; e.g. output/main_job/data, ~50 MB, so it can be
# carried to a machine without ../shared). Needs Python 3.11 with the pinned
# environment (tools/bootstrap.sh) and TensorFlow 2.14's CUDA 11.8 / cuDNN 8.7
# user-space libraries, e.g. `.venv/bin/pip install 'tensorflow[and-cuda]==2.14.1'`.
# Not run yet: the machines this project had so far lent no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE_DIR=${1:?usage: tools/gpu_check.sh CACHE_DIR [OUT_DIR]}
OUT=${2:-output/gpu_check}
source tools/env.sh
python -c "import tensorflow as tf; g = tf.config.list_physical_devices('GPU'); print('GPUs:', g); assert g, 'no GPU visible to TensorFlow'"
mkdir -p "$OUT"
for executor in accelerated local; do
  start=$(date +%s.%N)
  python -m runners.train --experiment_name="fedalt_$executor" --root_output_dir="$OUT" \
      --cache_dir="$CACHE_DIR" --algorithm=fedalt --model_size=mini --total_rounds=3 \
      --clients_per_round=12 --max_examples_per_client=128 --client_learning_rate=0.5 \
      --executor="$executor" --noreport --noprogress 2>&1 | tail -n 3
  echo "$executor $(echo "$(date +%s.%N) - $start" | bc)" >> "$OUT/seconds.txt"
done
python - "$OUT" <<'EOF'
import sys
import pandas as pd
out = sys.argv[1]
runs = {e: pd.read_csv(f'{out}/fedalt_{e}/metrics.csv', index_col='round') for e in ('accelerated', 'local')}
cols = [c for c in runs['local'].columns if c.endswith(('loss', 'accuracy'))]
print(pd.concat({e: df[cols] for e, df in runs.items()}, axis=1).to_string())
diff = (runs['accelerated'][cols] - runs['local'][cols]).abs().to_numpy().max()
print(f'max |accelerated - local| over the metrics: {diff:.2e}')
print(open(f'{out}/seconds.txt').read())
EOF
