#!/bin/bash
# Multi-node data-parallel training of one ldsrig model with SLURM + torchrun.
#
#   sbatch scripts/slurm_train.sh monet /shared/stores/clevr6 /shared/runs/monet-lds --lds
#   sbatch --nodes=4 scripts/slurm_train.sh iodine /shared/stores/clevr6 /shared/runs/iodine-lds --lds
#
# One SLURM task per node; on each node torchrun starts one process per GPU, and the c10d
# rendezvous on the first node joins them. The store and the run directory must be on a file
# system every node sees (rank 0 writes the run; every rank reads the store and, on --resume,
# the checkpoint). optim.batch_size is the GLOBAL batch (the paper's): each of the
# nodes x GPUs ranks computes batch_size / world_size images per step, so the paper settings
# need no change when the GPU count changes (keep it divisible by the world size).
# The run stops cleanly 10 minutes before the job's time limit (time_limit_minutes, from squeue).
# Re-submitting the same command continues the run from its latest checkpoint, on any number
# of nodes or GPUs (the data order depends only on the step, not on the world size).
#
#SBATCH --job-name=ldsrig-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=2
#SBATCH --cpus-per-task=16
#SBATCH --time=48:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

MODEL=${1:?usage: slurm_train.sh MODEL STORE RUN_DIR [--lds|--no-lds] [key=value ...]}
STORE=${2:?store path}
RUN_DIR=${3:?run directory}
shift 3

REPO=${LDSRIG_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
PYTHON=${LDSRIG_PYTHON:-$REPO/.venv/bin/python}
GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-1}}
GPUS_PER_NODE=${GPUS_PER_NODE##*:}          # "h100:2" -> "2"
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
PORT=${LDSRIG_RDZV_PORT:-29500}

RESUME=()
if [ -f "$RUN_DIR/config.yaml" ]; then
    RESUME=(--resume)                        # the saved config wins; --data is not needed
fi

# Threads per process: the node's CPUs shared by its GPUs' processes (data loading included).
export OMP_NUM_THREADS=$(( ${SLURM_CPUS_PER_TASK:-$GPUS_PER_NODE} / GPUS_PER_NODE ))

ARGS=(train "$MODEL" --out "$RUN_DIR" --no-progress "${RESUME[@]}")
if [ ${#RESUME[@]} -eq 0 ]; then
    ARGS+=(--data "$STORE" device=cuda amp=bf16 "workers=$(( OMP_NUM_THREADS > 1 ? 2 : 0 ))")
fi

# Stop cleanly before the job's wall-time limit, 10 minutes to spare for the last checkpoint and
# validation (time_limit_minutes); re-submitting the same command continues the run.
LEFT=$(squeue -h -j "$SLURM_JOB_ID" -o %L 2>/dev/null || true)    # [D-]HH:MM:SS, MM:SS or UNLIMITED
MINUTES=$("$PYTHON" - "$LEFT" <<'PY' || true
import re, sys
m = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", sys.argv[1].strip())
if m:
    days, hours, minutes, _ = (int(g or 0) for g in m.groups())
    print(max(1, (days * 24 + hours) * 60 + minutes - 10))
PY
)
if [ -n "$MINUTES" ]; then
    ARGS+=("time_limit_minutes=$MINUTES")
fi

srun --kill-on-bad-exit=1 "$PYTHON" -m torch.distributed.run \
    --nnodes "$SLURM_NNODES" \
    --nproc-per-node "$GPUS_PER_NODE" \
    --rdzv-id "$SLURM_JOB_ID" \
    --rdzv-backend c10d \
    --rdzv-endpoint "$HEAD_NODE:$PORT" \
    "$REPO/cli.py" "${ARGS[@]}" "$@"
