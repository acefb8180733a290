#!/usr/bin/env bash
# One prepared, unattended lease of a GPU machine (device time is scarce: one call does everything).
#   1. benchmarks.gpu_check: the full-size OmniBridge path, timed alone on the card, then with model offload
#      at a 24 GB card's budget (20 GiB of weights); then again with the LLM in 4-bit (--quantize);
#   2. new DiTs of several sizes trained at once on the built-in decoder's frozen VAE and text
#      encoders (--decoder-from), so that the shipped alignment stays valid; tiny models leave a big
#      GPU mostly idle, so they share it, each with worker processes rendering its batches;
#   2b. beside them, the shipped DiT distilled into an 8-step student (scripts/distill_dit.py; on the CPU its
#      curve went flat at 0.59-0.61 on validation in 594 steps at batch 64, docs/performance-notes.md);
#   3. their transformers (half precision: the transfer's 16 MB-per-file limit; loading casts back
#      to the pipeline's dtype) and logs packed into $OUT as dits.tar.part-*.
# Dry run on a CPU: PATH=.venv/bin:$PATH WHEELS= DEVICE=cpu MINUTES=0.05 CHECK_ARGS=--tiny SIZES=64x2 BATCH=8 \
#   DISTILL_ARGS="--eval-prompts-per-category 1" bash scripts/gpu_job.sh
set -u
OUT=${OUT:-/tmp/gpu-job-out}
DEVICE=${DEVICE:-cuda}
MINUTES=${MINUTES:-4}
SIZES=${SIZES:-"192x6 256x8 320x8"}
BATCH=${BATCH:-256}
CHECK_ARGS=${CHECK_ARGS:-}
DISTILL=${DISTILL:-1}
DISTILL_ARGS=${DISTILL_ARGS:-}
WORK=${WORK:-/tmp/gpu-job-work}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
WHEELS=${WHEELS-.whl}
if [ -n "$WHEELS" ] && [ -d "$WHEELS" ]; then  # this project's transformers/diffusers, where the machine's image lacks them
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, diffusers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'diffusers', diffusers.__version__)"

echo "== gpu_check $(date -u +%T)"
timeout 300 python3 -m benchmarks.gpu_check --device "$DEVICE" --out "$OUT/gpu_check.json" --max-gpu-memory 20 \
  $CHECK_ARGS 2>&1 | tail -4
if python3 -c "import bitsandbytes" 2>/dev/null; then  # the full-size LLM in 4-bit: the README's estimates, measured
  echo "== gpu_check --quantize 4bit $(date -u +%T)"
  timeout 420 python3 -m benchmarks.gpu_check --device "$DEVICE" --out "$OUT/gpu_check_4bit.json" --quantize 4bit \
    $CHECK_ARGS 2>&1 | tail -2
else
  echo "== gpu_check --quantize 4bit skipped: no bitsandbytes on this machine (add its wheel to $WHEELS)"
fi

echo "== training $SIZES for $MINUTES min each, at once $(date -u +%T)"
for size in $SIZES; do
  timeout $(python3 -c "print(int($MINUTES * 60 + 120))") python3 -m omnibridge.train --preset shapes \
    --out "$WORK/unused-$size" --work-dir "$WORK/dit-$size" --stages decoder \
    --decoder-from assets/omnibridge-shapes/decoder --dit-width "${size%x*}" --dit-layers "${size#*x}" \
    --dit-batch "$BATCH" --decoder-minutes "$MINUTES" --device "$DEVICE" --threads 2 > "$WORK/train-$size.log" 2>&1 &
done
if [ "$DISTILL" = 1 ]; then
  timeout $(python3 -c "print(int($MINUTES * 60 + 180))") python3 scripts/distill_dit.py --work-dir "$WORK/run-distill" \
    --minutes "$MINUTES" --batch "$BATCH" --device "$DEVICE" $DISTILL_ARGS > "$WORK/train-distill.log" 2>&1 &
fi
wait
echo "== packing $(date -u +%T)"
RUNS="$SIZES"; [ "$DISTILL" = 1 ] && RUNS="$SIZES distill"
python3 - "$WORK" $RUNS <<'PY'
import json, shutil, sys
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file
work, sizes = Path(sys.argv[1]), sys.argv[2:]
pack = work / "pack"
for size in sizes:
    # a DiT trained on is in dit-SIZE/ with its log in dit/; the distilled student in run-distill/, log in distill/
    run, dest = (work / "run-distill", pack / size) if size == "distill" else (work / f"dit-{size}", pack / size)
    stage = "distill" if size == "distill" else "dit"
    dest.mkdir(parents=True, exist_ok=True)
    saved = run / "decoder" / "transformer"
    if (saved / "diffusion_pytorch_model.safetensors").exists():
        weights = load_file(saved / "diffusion_pytorch_model.safetensors")
        shutil.copy(saved / "config.json", dest / "config.json")
    elif (run / stage / "best.pt").exists():  # stopped before its final save: its best evaluated EMA weights
        best = torch.load(run / stage / "best.pt", map_location="cpu")
        if stage == "dit":
            weights = {k.removeprefix("transformer."): v for k, v in best.items() if k.startswith("transformer.")}
        else:  # the student's own state dict; its config is the shipped DiT's
            weights = best
            shutil.copy("assets/omnibridge-shapes/decoder/transformer/config.json", dest / "config.json")
    else:
        print(size, "produced no weights"); continue
    save_file({k: v.half().contiguous() for k, v in weights.items()}, dest / "diffusion_pytorch_model.safetensors")
    for name in ("log.jsonl",):
        if (run / stage / name).exists():
            shutil.copy(run / stage / name, dest / name)
    shutil.copy(work / f"train-{size}.log", dest / "train.log")
    evals = [json.loads(l) for l in (run / stage / "log.jsonl").read_text().splitlines() if '"eval"' in l]
    print(size, "steps", evals[-1]["step"] if evals else None, "evals", [(e["step"], e["overall"]) for e in evals])
PY
for size in $RUNS; do tail -c 600 "$WORK/train-$size.log" | tr '\r' '\n' | tail -3; done
tar -C "$WORK" -cf "$WORK/dits.tar" pack && split -b 15m "$WORK/dits.tar" "$OUT/dits.tar.part-"
ls -la "$OUT"; echo "== done $(date -u +%T)"
