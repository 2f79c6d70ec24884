#!/usr/bin/env bash
# The exact commands that trained the shipped tabletop model (argenseg_ros/models/tabletop), run in
# one call on one lent GPU. Writes its results to $OUT (weights split in <16 MB parts, logs, metrics).
#   OUT=/some/dir bash tools/train_tabletop_gpu.sh
# Budgets are wall-clock minutes; both trainers resume from their checkpoints if run again.
# INIT=argenseg_ros/models/tabletop continues the shipped model instead (no VQ-VAE phase: its codes stay).
set -euo pipefail
OUT=${OUT:-$PWD/out/gpu}
RUN=${RUN:-/tmp/argenseg_run}
VQ_MIN=${VQ_MIN:-1.25}
MODEL_MIN=${MODEL_MIN:-6.3}
WORKERS=${WORKERS:-14}
LOG_EVERY=${LOG_EVERY:-200}
mkdir -p "$OUT" "$RUN"
if compgen -G ".whl/*.whl" >/dev/null; then   # a newer transformers than the GPU image's, carried as a wheel
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1

package() {
  if [ -f "$RUN/model/model/model.safetensors" ]; then
    split -b 15M -d "$RUN/model/model/model.safetensors" "$OUT/model.safetensors.part"
  fi
  tar -czf "$OUT/run.tar.gz" -C "$RUN" --exclude='checkpoint.pt' --exclude='model.safetensors' . || true
}
trap package EXIT

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt" || true
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"

if [ -n "${INIT:-}" ]; then
  MODEL_SOURCE=(--init "$INIT")
else
  python3 -c "from argenseg_ros.tabletop.training import main_vqvae; main_vqvae()" \
    --out "$RUN/vqvae" --device "${DEVICE:-cuda}" --minutes "$VQ_MIN" --batch 256 --lr 2e-3 --workers "$WORKERS" \
    --seed 0 --log-every "$LOG_EVERY" --checkpoint-minutes 1
  MODEL_SOURCE=(--vqvae "$RUN/vqvae/checkpoint.pt")
fi

python3 -c "from argenseg_ros.tabletop.training import main; main()" \
  --out "$RUN/model" "${MODEL_SOURCE[@]}" --device "${DEVICE:-cuda}" --minutes "$MODEL_MIN" \
  --batch 256 --lr "${LR:-1.5e-3}" --workers "$WORKERS" --seed 0 --log-every "$LOG_EVERY" --checkpoint-minutes 1
