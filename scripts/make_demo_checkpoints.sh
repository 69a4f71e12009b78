#!/usr/bin/env bash
# The demo's starting checkpoints (lds/assets/demo/): seed 0 of MONet0 and MONet+ from the
# committed CPU-regime study (docs/results/monet_cpu_regime), after its last step.
#
#   bash scripts/make_demo_checkpoints.sh STUDY_DIR
#
# STUDY_DIR is the --out of `ldsrig experiment run experiments/monet_cpu_regime.yaml`
# (its cube-scene runs of seed 0 must be finished).
set -euo pipefail
cd "$(dirname "$0")/.."
study="${1:?usage: make_demo_checkpoints.sh STUDY_DIR}"
steps=$(python3 -c "import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))['train']['steps'])" experiments/monet_cpu_regime.yaml)
mkdir -p lds/assets/demo
for group in control lds; do
    src="$study/runs/monet__cubes-32__${group}__seed0/checkpoints/$(printf 'step_%07d.safetensors' "$steps")"
    [ -f "$src" ] || { echo "missing $src: train the study's seed-0 cube runs first" >&2; exit 1; }
    name=$([ "$group" = control ] && echo monet0 || echo monet_lds)
    install -m 644 "$src" "lds/assets/demo/${name}_cubes32.safetensors"
    echo "lds/assets/demo/${name}_cubes32.safetensors <- $src"
done
