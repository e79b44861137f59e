#!/usr/bin/env bash
# `make demo`: ResNet-20 and SE-ResNet-20 on scikit-learn's digits, trained side by side with one
# CPU thread each, then both evaluated and compared.
#
# Side by side rather than one after the other: two 1-thread runs on 2 cores finish sooner than two
# 2-thread runs in turn (Paddle's second thread adds ~70%, a second process ~100%), and both runs
# see the same machine, so the images/s column of the comparison compares the models rather than
# two moments of a machine whose speed drifts.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${DEMO_OUT:-output/demo}
PORT=${VDL_PORT:-8040}
rm -rf "$OUT"

train() {  # start one run in the background ($! is train.py itself); its lines get the run's name
    "$PY" tools/train.py -c "configs/demo/$1.yaml" -o "output_dir=$OUT/$1" train.threads=1 \
        > >(sed -u "s/^/[$1] /") 2>&1 &
}
train resnet20_digits
plain=$!
train se_resnet20_digits
se=$!
# Stopping make stops both runs as a stop would stop one alone: each saves `last` and exits.
trap 'kill -TERM "$plain" "$se" 2>/dev/null; wait "$plain" "$se"; exit 143' TERM
trap 'kill -INT "$plain" "$se" 2>/dev/null; wait "$plain" "$se"; exit 130' INT
status=0
wait "$plain" || status=1
wait "$se" || status=1
trap - TERM INT
if [ "$status" -ne 0 ]; then
    echo "make demo: a training run failed (see its [name] lines above)" >&2
    exit 1
fi
set -e
for name in resnet20_digits se_resnet20_digits; do
    "$PY" tools/eval.py -c "configs/demo/$name.yaml" -o "model.weights=$OUT/$name/model.safetensors"
done
"$PY" tools/compare.py --runs "$OUT/resnet20_digits" "$OUT/se_resnet20_digits"
echo
echo "Training curves: run 'make vdl' and open http://127.0.0.1:$PORT"
