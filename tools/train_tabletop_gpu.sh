#!/usr/bin/env bash
# The exact commands that trained the shipped tabletop model (argenseg_ros/models/tabletop), run in
# one call on one lent GPU. Writes its results to $OUT (weights split in <16 MB parts, logs, metrics).
#   OUT=/some/dir bash tools/train_tabletop_gpu.sh
# Budgets are wall-clock minutes; both trainers resume from their checkpoints if run again.
# INIT=argenseg_ros/models/tabletop continues the shipped model instead (no VQ-VAE phase: its codes stay).
#
# With no new variable set, the commands are those of the shipped weights. Issue 16's recipe adds:
#   DATA_MIX=0.5      share of scenes from the failure mix (data_mix.py), both trainers
#   RANDOMISE=1       domain randomisation of the training renders (randomisation.py)
#   VQ_INIT=DIR|PT    fine-tune this VQ-VAE instead of a fresh one (needs VQ_LR=3e-5 or lower: one AdamW
#                     step at 1e-3 from the shipped VQ-VAE took its held-out IoU from 0.85 to 0.05)
#   RESTART_EVERY=100 move dead codes onto encoder latents every N VQ-VAE steps (codebook.py; the
#                     shipped VQ-VAE uses 2, 4, 7, 14, 30 of its 512 codes at its five scales)
#   VQ_IMAGE_SIZE=128 the 128 px mask tokenizer (same 341 tokens; VQ_INIT must then be unset)
#   EVAL_SCENES=100   evaluate the new model at the end: plain, randomised and guided-upsampled
#   TINY=1 (or --tiny) a CPU dry run of everything in a couple of minutes (niced, one thread)
# The two GPU runs of issue 16 (about 12 of the 15 device minutes on training; pick one):
#   new codes:  DATA_MIX=0.5 RANDOMISE=1 RESTART_EVERY=100 VQ_MIN=3 MODEL_MIN=9 WORKERS=14 LOG_EVERY=100 \
#               LR=1.5e-3 EVAL_SCENES=100 bash tools/train_tabletop_gpu.sh
#   same codes: INIT=argenseg_ros/models/tabletop DATA_MIX=0.5 RANDOMISE=1 MODEL_MIN=11 WORKERS=14 \
#               LOG_EVERY=100 LR=1e-3 EVAL_SCENES=100 bash tools/train_tabletop_gpu.sh
set -euo pipefail
if [ "${1:-}" = "--tiny" ]; then TINY=1; fi
if [ "${TINY:-0}" = "1" ]; then
  # Small everything, on the CPU: proves the recipe end to end (not a model worth keeping).
  OUT=${OUT:-$PWD/runs/gpu_tiny}
  RUN=${RUN:-$OUT/run}
  DEVICE=cpu VQ_MIN=${VQ_MIN:-0.5} MODEL_MIN=${MODEL_MIN:-0.75} WORKERS=${WORKERS:-1} LOG_EVERY=${LOG_EVERY:-2}
  VQ_BATCH=${VQ_BATCH:-8} MODEL_BATCH=${MODEL_BATCH:-8} EVAL_SCENES=${EVAL_SCENES:-2} EVAL_THREADS=1
  TOKENIZER_SCENES=${TOKENIZER_SCENES:-2}
  NICE="nice -n 19"
fi
OUT=${OUT:-$PWD/out/gpu}
RUN=${RUN:-/tmp/argenseg_run}
VQ_MIN=${VQ_MIN:-1.25}
MODEL_MIN=${MODEL_MIN:-6.3}
WORKERS=${WORKERS:-14}
LOG_EVERY=${LOG_EVERY:-200}
VQ_BATCH=${VQ_BATCH:-256}
MODEL_BATCH=${MODEL_BATCH:-256}
NICE=${NICE:-}
mkdir -p "$OUT" "$RUN"
if compgen -G ".whl/*.whl" >/dev/null; then   # a newer transformers than the GPU image's, carried as a wheel
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
PYTHON=${PYTHON:-python3}

package() {
  if [ -f "$RUN/model/model/model.safetensors" ]; then
    split -b 15M -d "$RUN/model/model/model.safetensors" "$OUT/model.safetensors.part"
  fi
  tar -czf "$OUT/run.tar.gz" -C "$RUN" --exclude='checkpoint.pt' --exclude='model.safetensors' . || true
}
trap package EXIT

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt" || true
$PYTHON -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"

# Options of issue 16's recipe; empty when unset, so the shipped commands stay as they were.
MIX=()
if [ "${DATA_MIX:-0}" != "0" ]; then MIX+=(--data-mix "$DATA_MIX"); fi
if [ "${RANDOMISE:-0}" = "1" ]; then MIX+=(--randomise); fi
VQ_EXTRA=()
if [ -n "${VQ_INIT:-}" ]; then VQ_EXTRA+=(--init "$VQ_INIT"); fi
if [ -n "${RESTART_EVERY:-}" ]; then VQ_EXTRA+=(--restart-every "$RESTART_EVERY"); fi
if [ -n "${VQ_IMAGE_SIZE:-}" ]; then VQ_EXTRA+=(--image-size "$VQ_IMAGE_SIZE"); fi

if [ -n "${INIT:-}" ]; then
  MODEL_SOURCE=(--init "$INIT")
else
  $NICE $PYTHON -c "from argenseg_ros.tabletop.training import main_vqvae; main_vqvae()" \
    --out "$RUN/vqvae" --device "${DEVICE:-cuda}" --minutes "$VQ_MIN" --batch "$VQ_BATCH" --lr "${VQ_LR:-2e-3}" \
    --workers "$WORKERS" --seed 0 --log-every "$LOG_EVERY" --checkpoint-minutes 1 "${MIX[@]}" "${VQ_EXTRA[@]}"
  MODEL_SOURCE=(--vqvae "$RUN/vqvae/checkpoint.pt")
fi

$NICE $PYTHON -c "from argenseg_ros.tabletop.training import main; main()" \
  --out "$RUN/model" "${MODEL_SOURCE[@]}" --device "${DEVICE:-cuda}" --minutes "$MODEL_MIN" \
  --batch "$MODEL_BATCH" --lr "${LR:-1.5e-3}" --workers "$WORKERS" --seed 0 --log-every "$LOG_EVERY" \
  --checkpoint-minutes 1 "${MIX[@]}"

if [ "${EVAL_SCENES:-0}" != "0" ]; then
  # The held-out split plain, rendered with domain randomisation (same queries), and with the
  # guided upsampler; the tokenizer's own reconstruction ceiling.
  for variant in plain photometric guided; do
    case $variant in
      plain) flags=() ;;
      photometric) flags=(--randomise photometric) ;;
      guided) flags=(--guided-upsampling) ;;
    esac
    $NICE $PYTHON -m argenseg_ros.tabletop.evaluation --model "$RUN/model/model" --scenes "$EVAL_SCENES" \
      --device "${DEVICE:-cuda}" --threads "${EVAL_THREADS:-2}" --out "$RUN/eval_$variant.json" \
      --markdown "$RUN/eval_$variant.md" --no-samples "${flags[@]}"
  done
  $NICE $PYTHON -m argenseg_ros.tabletop.tokenizer_eval --model "$RUN/model/model" --scenes "${TOKENIZER_SCENES:-40}" \
    --out "$RUN/tokenizer_eval.json"
  cp "$RUN"/eval_*.md "$RUN/tokenizer_eval.json" "$OUT/"
fi
