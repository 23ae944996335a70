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
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
    echo "error: the working tree has uncommitted changes; commit them first, so every JSON" \
         "is traceable to one commit" >&2
    exit 2
fi
if ! python -c "import torch, clipcbm.cache, clipcbm.heads" 2>/dev/null; then
    echo "error: run it in the project's virtualenv (. .venv/bin/activate): python cannot" \
         "import torch and the project" >&2
    exit 2
fi
ALL=(description_proxy sparsity_tradeoff defaults_sweep planted_heads probe_vs_sklearn
     elastic_net_solvers fit_head_speed cms_speed reliability sae attribution debiased
     concept_filter coupling_sweep remote_read finalize_scale imagenet_scale)
if [ "$#" -gt 0 ]; then RUN=("$@"); else RUN=("${ALL[@]}"); fi
mkdir -p benchmarks/results/logs
echo "commit $(git rev-parse HEAD)"
for name in "${RUN[@]}"; do
    [ -f "benchmarks/$name.py" ] || { echo "error: no benchmarks/$name.py" >&2; exit 2; }
    start=$(date +%s)
    echo "== $name"
    python "benchmarks/$name.py" > "benchmarks/results/logs/$name.log" 2>&1
    echo "   done in $(( $(date +%s) - start )) s"
done
# the README's CPU stage-one row (the GPU figures come from benchmarks/gpu_suite.sh)
if [ "$#" -eq 0 ]; then
    python benchmarks/embed_throughput.py --arch tiny --device cpu \
        --out benchmarks/results/embed_throughput_cpu_tiny.json \
        > benchmarks/results/logs/embed_throughput.log 2>&1
fi
python benchmarks/check_readme.py
