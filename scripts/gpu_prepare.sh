#!/usr/bin/env bash
# What scripts/gpu_checks.sh needs on the device, made here (CPU) in .gpu/ (ignored by git; the
# device tool carries it: carry=[".gpu"], about 16 MB):
#   .gpu/wheels  the packages the device image lacks (zarr and what it needs that the image does
#                not have), built for the image's Python 3.12 (docs: the device tool's KINDS.md)
#   .gpu/stores  CLE-MV-like 64x64 training and validation stores: the CPU study's scenes
#                (experiments/monet_cpu_regime.yaml, seeds 0 and 1), prepared at 64x64
# RAW=DIR reuses raw stores already rendered there (default /work/exp_data); missing ones are
# rendered (about 10 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
L=.venv/bin/ldsrig
RAW=${RAW:-/work/exp_data}
mkdir -p .gpu/wheels .gpu/stores "$RAW"
.venv/bin/pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/wheels zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
for split in "train 100 0" "val 20 1"; do
    set -- $split
    raw=$RAW/clevr_$1_raw.zarr
    [ -e "$raw" ] || $L data synth clevr-mv "$raw" --scenes "$2" --views 10 --min-objects 2 \
        --max-objects 5 --seed "$3" -j 2
    [ -e ".gpu/stores/clevr64_$1.zarr" ] || $L data prepare "$raw" ".gpu/stores/clevr64_$1.zarr" --size 64
done
du -sh .gpu
