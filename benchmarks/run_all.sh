#!/usr/bin/env bash
# Regenerate every JSON the README and docs tables read, at ONE clean commit, one run each.
#
#   bash benchmarks/run_all.sh            # all of them, in order (hours on a 2-core CPU)
#   bash benchmarks/run_all.sh sae probe_vs_sklearn     # only these (script names, no .py)
#
# Refuses to start on a working tree with uncommitted changes to tracked files: each JSON's
# provenance then names the commit and says clean: true. Logs go to benchmarks/results/logs/
# (git-ignored; the JSONs record the seconds). After it, run
# `python benchmarks/check_readme.py` and update the tables whose numbers moved.
set -euo pipefail
cd "$(dirname "$0")/.."
# rewritten results (benchmarks/results/) do not count, as in _provenance.py: a second run of
# a few scripts after a first one must not be refused for the first one's JSONs
if [ -n "$(git status --porcelain --untracked-files=no | grep -v '^...benchmarks/results/')" ]; then
    echo "error: the working tree has uncommitted changes; commit them first, so every JSON" \
         "is traceable to one commit" >&2
    exit 2
fi
if ! python -c "import torch, clipcbm.cache, clipcbm.heads" 2>/dev/null; then
    echo "error: run it in the project's virtualenv (. .venv/bin/activate): python cannot" \
         "import torch and the project" >&2
    exit 2
fi
# In dependency order: testbed.py builds runs/testbed/, description_proxy.py runs/proxy/; shots.py
# and concept_span.py read both. The learners come first, the timings (which want a quiet
# machine) after them, the ImageNet-shaped run (~2 h on 2 cores) last.
ALL=(testbed description_proxy shots concept_span sparsity_tradeoff defaults_sweep planted_heads
     coupling_sweep concept_filter sae debiased attribution probe_vs_sklearn elastic_net_solvers
     fit_head_speed cms_speed reliability remote_read finalize_scale imagenet_scale)
# the README's command lines where a script's defaults are not them
declare -A ARGS=(
    [shots]="--cache testbed=runs/testbed/cifar10-photos.zarr --cache planted=runs/proxy/planted.zarr --cache cifar10-desc=runs/proxy/cifar10-desc.zarr --seeds 3"
)
if [ "$#" -gt 0 ]; then RUN=("$@"); else RUN=("${ALL[@]}"); fi
mkdir -p benchmarks/results/logs
failed=()
echo "commit $(git rev-parse HEAD)"
for name in "${RUN[@]}"; do
    [ -f "benchmarks/$name.py" ] || { echo "error: no benchmarks/$name.py" >&2; exit 2; }
    start=$(date +%s)
    echo "== $name"
    # shellcheck disable=SC2086  # ARGS holds words to split
    if python "benchmarks/$name.py" ${ARGS[$name]:-} > "benchmarks/results/logs/$name.log" 2>&1; then
        echo "   done in $(( $(date +%s) - start )) s"
    else  # go on: the others' JSONs are still worth having; say so at the end
        echo "   FAILED after $(( $(date +%s) - start )) s: see benchmarks/results/logs/$name.log"
        failed+=("$name")
    fi
done
# the README's CPU stage-one row (the GPU figures come from benchmarks/gpu_suite.sh)
if [ "$#" -eq 0 ]; then
    python benchmarks/embed_throughput.py --arch tiny --device cpu \
        --out benchmarks/results/embed_throughput_cpu_tiny.json \
        > benchmarks/results/logs/embed_throughput.log 2>&1
fi
python benchmarks/check_readme.py || true  # a moved number is for you to update
if [ "${#failed[@]}" -gt 0 ]; then
    echo "error: ${#failed[@]} failed: ${failed[*]} (their JSONs were not rewritten)" >&2
    exit 1
fi
