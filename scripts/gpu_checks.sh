#!/usr/bin/env bash
# The GPU items of issues 12 (item 7), 14 (item 5) and 17 (item 4) as one run on a lent GPU.
#
# Here, first (CPU, once per machine): bash scripts/gpu_prepare.sh       (.gpu/: wheels, stores)
# Then, with the device tool:
#   run(command="bash scripts/gpu_checks.sh", carry=[".gpu"], timeout_s=600)
# Results come back as $OUT/results.tar.gz (curves, eval.json, configs, benchmark text; no
# checkpoints) and $OUT/log.txt.
#
# What it does, in this order (each step's output is kept even if a later one fails):
#   1. the device's facts (nvidia-smi, torch, CUDA) and the project's imports
#   2. speed: MONet, IODINE and GENESIS at the paper settings, fp32 against bf16 autocast
#      (benchmarks/bench_models_train.py --compare-amp), then the same fp32 steps with
#      torch.compile (BENCH=0 skips both)
#   3. MONet0 and MONet+ at the paper setting (64x64, batch 40, K=7, RMSprop 3e-4) on the
#      CLE-MV-like store, MONET_MIN minutes each (time_limit_minutes), validation FG-ARI, mIoU
#      and MSE on held-out scenes every VALIDATE_EVERY steps, then eval of the last checkpoint
#   4. IODINE0 and IODINE+ at the paper setting (64x64, batch 8, K=7, T=5, Adam 1e-4), IODINE_MIN
#      minutes each, the same curves and eval
#   5. the inference gap's speed on 16 held-out images, fp32 and bf16 (MONet+ run)
# A device session has 15 minutes in all, a machine's start included: the defaults leave
# about 3 minutes of it to spare. DEVICE=cpu with small budgets dry-runs it here.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_out}
DEVICE=${DEVICE:-cuda}
MONET_MIN=${MONET_MIN:-2.5}
IODINE_MIN=${IODINE_MIN:-1.5}
VALIDATE_EVERY=${VALIDATE_EVERY:-250}
BENCH=${BENCH:-1}
PY=${PYTHON:-python3}
WORK=$OUT/work
STORES=.gpu/stores
mkdir -p "$WORK"
exec > >(tee "$OUT/log.txt") 2>&1

step() { echo; echo "== $(date -u +%T) $*"; }
pack() { tar czf "$OUT/results.tar.gz" -C "$WORK" --exclude='checkpoints' --exclude='tensorboard' . ; }
trap pack EXIT

step "1. device and imports"
# The device image lacks zarr (and what it needs): carried as wheels for its Python.
if ! $PY -c "import zarr" 2>/dev/null; then
    $PY -m pip install --quiet --no-index --no-deps --target /tmp/pydeps .gpu/wheels/*.whl
    export PYTHONPATH=/tmp/pydeps${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY - <<'EOF'
import torch, zarr
print("torch", torch.__version__, "cuda", torch.version.cuda, "zarr", zarr.__version__)
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), torch.cuda.get_device_capability())
import lds.training.loop, lds.evaluation.evaluate, datasets.torch_data  # noqa: F401
print("project imports ok")
EOF
L="$PY cli.py"
[ -e "$STORES/clevr64_train.zarr" ] || { echo "no $STORES: run scripts/gpu_prepare.sh here first"; exit 1; }

if [ "$BENCH" = 1 ]; then
    step "2. speed at the paper settings: fp32 vs bf16 autocast, then torch.compile"
    $PY benchmarks/bench_models_train.py --device "$DEVICE" --threads 0 --models monet iodine genesis \
        --compare-amp --steps 5 --no-checkpoint-case | tee "$WORK/bench_models_amp.txt"
    $PY - <<EOF 2>&1 | tee "$WORK/bench_compile.txt"
# fp32 training steps, eager against torch.compile, MONet at the paper setting (first steps of
# a compiled model include compilation: the best of the later steps is the figure)
import time, torch
from lds.models import build_model, MONetConfig
from lds.training.objective import training_objective
from lds.training.config import LDSConfig
device = torch.device("$DEVICE")
for compiled in (False, True):
    torch.manual_seed(0)
    model = build_model("monet", MONetConfig()).to(device).train()
    forward = torch.compile(model) if compiled else model
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-4)
    batch = {"image": torch.rand(40, 3, 64, 64, device=device)}
    times = []
    for i in range(12):
        if device.type == "cuda": torch.cuda.synchronize()
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss, _ = training_objective(forward(batch), LDSConfig(enabled=True))
        loss.backward(); opt.step()
        if device.type == "cuda": torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    best = min(times[4:])
    print(f"MONet paper step, {'compiled' if compiled else 'eager'}: {best * 1e3:.1f} ms, {40 / best:.0f} images/s (first step {times[0]:.1f} s)")
EOF
fi

train_pair() {   # model minutes extra-overrides...
    local model=$1 minutes=$2; shift 2
    for group in control lds; do
        local run=$WORK/${model}_$group
        step "train $model $group for $minutes min"
        $L train "$model" --data "$STORES/clevr64_train.zarr" --out "$run" --no-progress \
            $([ $group = lds ] && echo --lds || echo --no-lds) device="$DEVICE" \
            time_limit_minutes="$minutes" validate.data="$STORES/clevr64_val.zarr" \
            validate.every="$VALIDATE_EVERY" log.every=50 log.checkpoint_every=100000 \
            log.tensorboard=false "$@"
        $L eval "$run" --data "$STORES/clevr64_val.zarr" --device "$DEVICE" --figure 6 2>&1 | tail -4
    done
}

step "3. MONet0 / MONet+ at the paper setting"
train_pair monet "$MONET_MIN" workers=4
step "4. IODINE0 / IODINE+ at the paper setting"
train_pair iodine "$IODINE_MIN" workers=4

step "5. inference gap speed (MONet+, 16 images, B=500)"
for amp in off bf16; do
    $L gap "$WORK/monet_lds" --data "$STORES/clevr64_val.zarr" --device "$DEVICE" --samples 500 \
        --max-images 16 --batch-size 16 --amp "$amp" --out "$WORK/gap_$amp.json" --no-progress 2>&1 | tail -2
done
step "done"
