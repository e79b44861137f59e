#!/usr/bin/env bash
# Run one of the paper's ablation tables as a sweep: every config of the group, several seeds.
#
#   scripts/sweep.sh GROUP [tools/sweep.py options...]
#   scripts/sweep.sh se_resnet50_reduction -o data.root=/data/ILSVRC2012 --nproc 8
#   scripts/sweep.sh se_resnet110_gate --seeds 0 1 2 3 4
#   scripts/sweep.sh digits          # the four demo configs in 5 epochs: ResNet-20, SE, ECA, CBAM (docs/sweep.md)
#
# GROUP is a file-name prefix in configs/ablation/ (see its README.md): <model>_squeeze, _gate,
# _placement, _stages or _reduction; or `digits`, the blocks side by side on the demo data, plain
# net first. Runs and results.{md,csv,json} go to output/sweeps/GROUP unless --out is given. Rerun
# the same command to resume an interrupted sweep.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: $0 GROUP [tools/sweep.py options...]; groups:" >&2
    ls configs/ablation/*.yaml | sed -E 's#.*/##; s#^(.*_(squeeze|gate|placement|stages|reduction))_.*#  \1#' | sort -u >&2
    echo "  digits" >&2
    exit 2
fi
group=$1
shift
shopt -s nullglob
if [ "$group" = digits ]; then
    configs=(configs/demo/{,se_,eca_,cbam_}resnet20_digits.yaml)  # this order, the baseline first; not a glob's
else
    configs=(configs/ablation/"$group"_*.yaml)
fi
if [ ${#configs[@]} -eq 0 ]; then
    echo "no configs/ablation/${group}_*.yaml; run $0 without arguments to list the groups" >&2
    exit 2
fi
python=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && python=.venv/bin/python
out=(--out "output/sweeps/$group")
jobs=()
recipe=()
if [ "$group" = digits ]; then
    jobs=(--jobs 2)  # small nets: two one-core runs beat one two-core run
    # The demo's recipe in 5 epochs instead of 7: 12 runs in about 20 minutes on 2 cores (docs/sweep.md).
    # A later `-o train.epochs=N` among the options wins.
    recipe=(-o train.epochs=5)
fi
for arg in "$@"; do
    [ "$arg" = "--out" ] && out=()
    [ "$arg" = "--jobs" ] && jobs=()
done
# ${a[@]+"${a[@]}"}: an empty array is "unbound" to `set -u` in bash before 4.4 (macOS has 3.2).
exec "$python" tools/sweep.py -c "${configs[@]}" ${out[@]+"${out[@]}"} ${jobs[@]+"${jobs[@]}"} ${recipe[@]+"${recipe[@]}"} "$@"
