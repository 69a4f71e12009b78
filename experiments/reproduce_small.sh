#!/usr/bin/env bash
# The scaled-down reproduction committed under docs/results/ (MONet control vs LDS, 3 seeds,
# synthetic CLE-MV-like scenes at 32x32). About 75 minutes of wall time on 2 shared CPU cores.
# Run from the repository root, in the background:  nohup experiments/reproduce_small.sh &
set -euo pipefail
PY=${PY:-.venv/bin/python}
DATA=${DATA:-/work/exp_data}
STUDY=${STUDY:-$DATA/study}
SPEC=experiments/monet_clevr_mv_small.yaml      # its store paths point at /work/exp_data

# 1. Stores: 160 training scenes, 30 test scenes (another seed), 10 views each, 2-3 objects.
$PY cli.py data synth clevr-mv $DATA/clevr_mv_64.zarr --scenes 160 --views 10 --spp 8 \
    --min-objects 2 --max-objects 3 --seed 0 -q
$PY cli.py data synth clevr-mv $DATA/clevr_mv_64_test.zarr --scenes 30 --views 10 --spp 8 \
    --min-objects 2 --max-objects 3 --seed 1 -q
[ -e $DATA/clevr_mv_32_train.zarr ] || $PY cli.py data prepare $DATA/clevr_mv_64.zarr $DATA/clevr_mv_32_train.zarr --size 32 -q
[ -e $DATA/clevr_mv_32_test.zarr ] || $PY cli.py data prepare $DATA/clevr_mv_64_test.zarr $DATA/clevr_mv_32_test.zarr --size 32 -q

# 2. Train + evaluate every run, two processes (one thread each) sharing the study directory.
$PY cli.py experiment run $SPEC --out $STUDY --slice 0/2 --no-progress > $DATA/study_slice0.log 2>&1 &
$PY cli.py experiment run $SPEC --out $STUDY --slice 1/2 --no-progress > $DATA/study_slice1.log 2>&1 &
wait

# 3. The inference gap on the main runs (only adds gap.json; nothing is retrained).
$PY cli.py experiment run $SPEC --out $STUDY --no-progress --threads 2 gap.enabled=true

# 4. The report, copied into the repository.
$PY cli.py experiment report $STUDY --out docs/results/monet_clevr_mv_small
