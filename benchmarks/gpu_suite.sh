#!/usr/bin/env bash
# GPU benchmark suite: the first thing a session with a lent GPU runs (one H100/H200).
#
#   bash benchmarks/gpu_suite.sh                                  # on the GPU machine
#   GPU_SUITE_DEVICE=cpu GPU_SUITE_QUICK=1 bash benchmarks/gpu_suite.sh   # CPU dry run, tiny sizes
#
# Figures (one JSON each under $GPU_SUITE_RESULTS, then a summary table):
#   (a) embed.json / embed_compile.json  stage one, ViT-L/14 shape from config (random weights),
#       fp16: decode+preprocess, model-only, end to end through `embed` on real JPEGs (one run,
#       and the steady-state rate from a small and a big run); eager and --compile
#       (benchmarks/embed_throughput.py)
#   (b) fit_head_imagenet.json  fit-head seconds per epoch at 1.28M x |D|=4,751 -> 1,000 classes,
#       l1 / contrastive / sparse, one whole epoch each through heads.cbm.train.run
#       (benchmarks/fit_head_speed.py --imagenet-mode full)
#   (c) cms_imagenet.json  cms-eval at 50k x 4,751 x 1,000 on the GPU, seconds and top-1 per
#       normalisation (benchmarks/cms_speed.py --device cuda)
#   (d) gpu_attribution.json  M2IB pairs/s for the ViT-B/32 and ViT-L/14 shapes, fp16
#       (benchmarks/gpu_attribution.py)
#   (e) gpu_sae.json  TopK SAE training samples/s (benchmarks/gpu_sae.py)
# plus steps.jsonl (one line per step: ok / failed / timeout / skipped), summary.md and
# suite.log. A failing step is recorded and the suite goes on. Every step has a timeout, and
# the whole suite a budget (GPU_SUITE_BUDGET_S, default 450 s): steps are cut to what is left,
# so it ends in under 8 minutes on one H100 (nvidia-smi is printed once at the start).
#
# Install: nothing is installed from the network (the GPU machine has none). The suite uses
# an interpreter whose torch already sees the GPU and fails with a clear message otherwise.
# Variables (all optional):
#   GPU_SUITE_PYTHON   interpreter to use (the "install path"). Default: the first of
#                      ./.venv/bin/python and python3 whose torch imports (with CUDA unless
#                      GPU_SUITE_DEVICE=cpu). On the lent H100/H200 image python3 is
#                      /opt/torch/.venv/bin/python3 (torch with CUDA, transformers, h5py, pandas).
#   GPU_SUITE_WHEELS   folder of wheels installed offline (pip --no-index --no-deps --target
#                      GPU_SUITE_SITE, then PYTHONPATH) when the interpreter lacks a project
#                      dependency; default build/gpu_suite/whl. Made on a networked machine by
#                      `bash benchmarks/gpu_suite_prepare.sh` (zarr, numcodecs, donfig,
#                      google-crc32c: the ones the GPU image lacks).
#   GPU_SUITE_SITE     where those wheels go (default /tmp/gpu_suite_site).
#   GPU_SUITE_DATA     folder holding imagenet_sample/*.JPEG. Default: the first of ../shared/data,
#                      build/gpu_suite/data, shared/data that has them (../shared does not travel
#                      to the GPU machine: gpu_suite_prepare.sh copies a subset into build/).
#   GPU_SUITE_DEVICE   cuda (default) | cuda:N | cpu (dry run).
#   GPU_SUITE_QUICK    1: tiny sizes (tiny CLIP, small caches) for a dry run in well under 2 min.
#   GPU_SUITE_RESULTS  output folder. Default benchmarks/results/gpu, or
#                      build/gpu_suite/results-<device>[-quick] for a CPU or quick run (so a dry
#                      run never lands beside real GPU figures).
#   GPU_SUITE_BUDGET_S whole-suite budget in seconds (450; quick: 150).
#   GPU_SUITE_COMPILE_BACKEND  torch.compile backend of the --compile step (inductor; quick:
#                      eager, which traces without building code: a CPU compile takes minutes).
#   GPU_SUITE_EMBED_IMAGES, GPU_SUITE_EMBED_SMALL  images of the big and the small end-to-end
#                      run (4096 and 1024: multiples of the batch, so --compile sees one shape).
#   GPU_SUITE_WORK     scratch folder (default: a new temporary one, removed at the end).
#   OUT                if set (the device tool's output folder), the JSONs, summary.md and
#                      suite.log are copied there too.
#
# On the device tool: first `bash benchmarks/gpu_suite_prepare.sh` here, then
#   run(command="bash benchmarks/gpu_suite.sh", carry=["build/gpu_suite"], timeout_s=540)
# and copy the files that come back (from $OUT) into benchmarks/results/gpu/; then
# `python benchmarks/gpu_suite_summary.py` prints the tables again (README-ready, with the
# `<!-- numbers: ... -->` markers that benchmarks/check_readme.py checks).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
SUITE_T0=$(date +%s)

DEVICE=${GPU_SUITE_DEVICE:-cuda}
QUICK=${GPU_SUITE_QUICK:-0}
WHEELS=${GPU_SUITE_WHEELS:-build/gpu_suite/whl}
SITE=${GPU_SUITE_SITE:-/tmp/gpu_suite_site}
if [[ $QUICK == 1 ]]; then BUDGET=${GPU_SUITE_BUDGET_S:-150}; else BUDGET=${GPU_SUITE_BUDGET_S:-450}; fi
EMBED_IMAGES=${GPU_SUITE_EMBED_IMAGES:-4096}
EMBED_SMALL=${GPU_SUITE_EMBED_SMALL:-1024}
if [[ -n ${GPU_SUITE_RESULTS:-} ]]; then
    RESULTS=$GPU_SUITE_RESULTS
elif [[ $DEVICE == cuda* && $QUICK != 1 ]]; then
    RESULTS=benchmarks/results/gpu
else
    RESULTS=build/gpu_suite/results-${DEVICE//:/}
    if [[ $QUICK == 1 ]]; then RESULTS=$RESULTS-quick; fi
fi
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
if [[ -n ${GPU_SUITE_WORK:-} ]]; then
    WORK=$GPU_SUITE_WORK
    mkdir -p "$WORK"
else
    WORK=$(mktemp -d -t gpu_suite.XXXXXX)
    trap 'rm -rf "$WORK"' EXIT
fi
LOGS=$WORK/logs
mkdir -p "$LOGS"
STEPS=$RESULTS/steps.jsonl
: >"$STEPS"
rm -f "$RESULTS"/{embed,embed_compile,fit_head_imagenet,cms_imagenet}.json "$RESULTS/summary.md"

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_DISABLE_PROGRESS_BARS=1 TORCHINDUCTOR_CACHE_DIR=$WORK/inductor

say() { printf '[gpu_suite %4ds] %s\n' "$(($(date +%s) - SUITE_T0))" "$*"; }
die() {
    say "ERROR: $*"
    printf '{"step": "preflight", "status": "failed", "rc": 2, "seconds": 0, "json": null, "detail": "%s"}\n' \
        "$(printf '%s' "$*" | tr '"\n' "' ")" >>"$STEPS"
    if [[ -n ${OUT:-} && -d ${OUT:-} ]]; then cp "$STEPS" "$OUT"/ || true; fi
    exit 2
}

say "repo $REPO  device $DEVICE  quick $QUICK  budget ${BUDGET}s  results $RESULTS"
say "host $(uname -n)  cores $(nproc)  $(date -u +%Y-%m-%dT%H:%M:%SZ)  commit $(git rev-parse --short HEAD 2>/dev/null || echo -)"

# ---------------------------------------------------------------- nvidia-smi, once
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi || say "nvidia-smi failed (rc $?)"
else
    say "nvidia-smi not found"
    if [[ $DEVICE == cuda* ]]; then say "warning: no nvidia-smi on a cuda run"; fi
fi

# ---------------------------------------------------------------- interpreter ("install")
# One Python call per candidate: exit 3 = no torch (or no CUDA for a cuda run), 1 = a project
# dependency is missing (printed), 0 = ready (prints the versions).
PREFLIGHT='
import importlib, sys
try:
    import torch
except Exception as e:
    print(f"torch does not import ({type(e).__name__}: {e})")
    sys.exit(3)
if sys.argv[1].startswith("cuda") and not torch.cuda.is_available():
    print(f"torch {torch.__version__} (cuda build {torch.version.cuda}) sees no CUDA device")
    sys.exit(3)
missing = []
for m in ("zarr", "numcodecs", "h5py", "pandas", "transformers", "safetensors", "PIL", "tqdm", "typer"):
    try:
        importlib.import_module(m)
    except Exception as e:
        missing.append(f"{m} ({type(e).__name__}: {e})")
if not missing:
    try:
        from transformers import CLIPImageProcessorPil  # noqa: F401
        import cache, heads.cbm.train, heads.eval.commands, pipeline.embed  # noqa: F401
    except Exception as e:
        missing.append(f"project import ({type(e).__name__}: {e})")
if missing:
    print("; ".join(missing))
    sys.exit(1)
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
print(f"Python {sys.version.split()[0]}, torch {torch.__version__} (cuda {torch.version.cuda}), {gpu}")
'
preflight() { # $1 = python; sets PF_RC and PF_MSG
    PF_RC=0
    PF_MSG=$("$1" -c "$PREFLIGHT" "$DEVICE" 2>&1 | tail -1) || PF_RC=$?
    if ! command -v "$1" >/dev/null 2>&1; then PF_RC=3 PF_MSG="$1: not found"; fi
}
TRIED=()
if [[ -n ${GPU_SUITE_PYTHON:-} ]]; then
    PY=$GPU_SUITE_PYTHON
    preflight "$PY"
    TRIED+=("$PY: $PF_MSG")
else
    for PY in "$REPO/.venv/bin/python" python3; do
        preflight "$PY"
        TRIED+=("$PY: $PF_MSG")
        if ((PF_RC != 3)); then break; fi
    done
fi
if ((PF_RC == 3)); then
    die "no usable torch for device $DEVICE (tried ${TRIED[*]/%/;}). This suite installs nothing (the GPU machine has no network): set GPU_SUITE_PYTHON to an interpreter whose torch sees the GPU (on the lent GPU image: python3 = /opt/torch/.venv/bin/python3), or dry-run with GPU_SUITE_DEVICE=cpu."
fi
if ((PF_RC != 0)); then
    if compgen -G "$WHEELS/*.whl" >/dev/null; then
        say "$PY lacks: $PF_MSG -> installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $SITE (offline)"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" "$WHEELS"/*.whl || die "offline wheel install from $WHEELS failed"
        export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
        preflight "$PY"
        if ((PF_RC != 0)); then die "still missing after the wheels: $PF_MSG"; fi
    else
        die "$PY lacks: $PF_MSG. Bring them as wheels: run 'bash benchmarks/gpu_suite_prepare.sh' on a machine with PyPI access and carry build/gpu_suite (or set GPU_SUITE_WHEELS)."
    fi
fi
say "python $(command -v "$PY"): $PF_MSG; dependencies OK"

# ---------------------------------------------------------------- data
if [[ -z ${GPU_SUITE_DATA:-} ]]; then
    for cand in ../shared/data build/gpu_suite/data shared/data; do
        if compgen -G "$cand/imagenet_sample/*.JPEG" >/dev/null; then GPU_SUITE_DATA=$cand && break; fi
    done
fi
DATA=${GPU_SUITE_DATA:-../shared/data}
if compgen -G "$DATA/imagenet_sample/*.JPEG" >/dev/null; then
    say "JPEGs: $(ls "$DATA"/imagenet_sample/*.JPEG | wc -l) in $DATA/imagenet_sample"
else
    say "warning: no JPEGs under $DATA/imagenet_sample (set GPU_SUITE_DATA): the stage-one steps will fail"
fi

# ---------------------------------------------------------------- steps
run_step() { # NAME LIMIT_S JSON CMD... ; never fails the suite
    local name=$1 limit=$2 json=$3
    shift 3
    local left=$((BUDGET - ($(date +%s) - SUITE_T0)))
    local t0 rc status
    if ((left < 20)); then
        say "$name: skipped (${left}s of the ${BUDGET}s budget left)"
        printf '{"step": "%s", "status": "skipped", "rc": null, "seconds": 0, "json": null, "detail": "budget"}\n' "$name" >>"$STEPS"
        return 0
    fi
    if ((limit > left - 5)); then limit=$((left - 5)); fi
    say "$name: start (timeout ${limit}s): $*"
    t0=$(date +%s)
    if timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1; then rc=0; else rc=$?; fi
    local secs=$(($(date +%s) - t0))
    if ((rc == 0)) && [[ -s $RESULTS/$json ]]; then
        status=ok
    elif ((rc == 124 || rc == 137)); then
        status=timeout
    else
        status=failed
        if ((rc == 0)); then rc=1; fi # exited 0 but wrote no JSON
    fi
    local detail=""
    if [[ $status != ok ]]; then
        detail=$( (grep -v '^[[:space:]]*$' "$LOGS/$name.log" || true) | tail -1 | cut -c1-200 |
            tr '"\\\t' "'/ " | tr -cd '[:print:]')
        say "$name: $status (rc $rc) after ${secs}s; last lines of its log:"
        tail -15 "$LOGS/$name.log" | sed 's/^/    /' || true
    else
        say "$name: ok in ${secs}s -> $RESULTS/$json"
    fi
    local jfield=null
    if [[ $status == ok ]]; then jfield="\"$json\""; fi
    printf '{"step": "%s", "status": "%s", "rc": %s, "seconds": %s, "json": %s, "detail": "%s"}\n' \
        "$name" "$status" "$rc" "$secs" "$jfield" "$detail" >>"$STEPS"
    return 0
}

if [[ $QUICK == 1 ]]; then
    EMBED=(--arch tiny --dtype auto --images 128 --e2e-small 32 --batch 32 --iters 2 --workers 1)
    EMBED_COMPILE=(--arch tiny --dtype auto --images 64 --e2e-small 32 --batch 32 --iters 2 --workers 1)
    FIT=(--set imagenet.n_train=2000 --set imagenet.n_test=400 --set imagenet.d=120 --set imagenet.c=20)
    CMS=(--n 2000 --concepts 200 --classes 20 --normalize none)
    LIMITS=(60 60 60 60 60 60)
    ATTR=(--dry-run)
    SAE=(--quick)
    COMPILE_BACKEND=${GPU_SUITE_COMPILE_BACKEND:-eager} # dynamo only: no C++ build on a CPU
else
    EMBED=(--arch vit-l-14 --dtype fp16 --images "$EMBED_IMAGES" --e2e-small "$EMBED_SMALL" --batch 256 --iters 20)
    EMBED_COMPILE=("${EMBED[@]}")
    FIT=()
    CMS=()
    LIMITS=(180 300 150 240 90 90)
    ATTR=(--dtype fp16)
    SAE=()
    COMPILE_BACKEND=${GPU_SUITE_COMPILE_BACKEND:-inductor}
fi
GEN=numpy
if [[ $DEVICE == cuda* ]]; then GEN=torch:$DEVICE; fi

# (a) eager first: it also builds the random-weight model that the --compile step reuses
run_step embed "${LIMITS[0]}" embed.json \
    "$PY" benchmarks/embed_throughput.py "${EMBED[@]}" --device "$DEVICE" \
    --model-dir "$WORK/model" --data "$DATA" --out "$RESULTS/embed.json"
# (b)
run_step fit_head "${LIMITS[1]}" fit_head_imagenet.json \
    "$PY" benchmarks/fit_head_speed.py --sizes imagenet --devices "$DEVICE" --imagenet-mode full \
    --imagenet-losses l1,contrastive,sparse --epochs 1 --generator "$GEN" ${FIT[@]+"${FIT[@]}"} \
    --workdir "$WORK/fit" --out "$RESULTS/fit_head_imagenet.json"
# (c)
run_step cms "${LIMITS[2]}" cms_imagenet.json \
    "$PY" benchmarks/cms_speed.py --device "$DEVICE" ${CMS[@]+"${CMS[@]}"} --out "$RESULTS/cms_imagenet.json"
# (d) M2IB pairs/s, ViT-B/32 and ViT-L/14 shapes (benchmarks/gpu_attribution.py)
run_step attribution "${LIMITS[4]}" gpu_attribution.json \
    "$PY" benchmarks/gpu_attribution.py --device "$DEVICE" "${ATTR[@]}" --out "$RESULTS/gpu_attribution.json"
# (e) TopK SAE training samples/s at 1.28M x 768 (benchmarks/gpu_sae.py)
if [[ -f benchmarks/gpu_sae.py ]]; then
    run_step sae "${LIMITS[5]}" gpu_sae.json \
        "$PY" benchmarks/gpu_sae.py --device "$DEVICE" ${SAE[@]+"${SAE[@]}"} --out "$RESULTS/gpu_sae.json"
fi
# (a) with --compile last: the longest and the likeliest to hit the budget
run_step embed_compile "${LIMITS[3]}" embed_compile.json \
    "$PY" benchmarks/embed_throughput.py "${EMBED_COMPILE[@]}" --device "$DEVICE" --compile \
    --compile-backend "$COMPILE_BACKEND" \
    --skip-decode --model-dir "$WORK/model" --data "$DATA" --out "$RESULTS/embed_compile.json"

# ---------------------------------------------------------------- summary
{
    for f in "$LOGS"/*.log; do
        [[ -e $f ]] || continue # every step skipped: no logs
        echo "===== $(basename "$f") (last 200 lines)"
        tail -200 "$f"
    done
} >"$RESULTS/suite.log"
say "summary ($(($(date +%s) - SUITE_T0))s so far):"
"$PY" benchmarks/gpu_suite_summary.py "$RESULTS" --write "$RESULTS/summary.md" ||
    say "gpu_suite_summary.py failed"
if [[ -n ${OUT:-} && -d ${OUT:-} ]]; then
    cp "$RESULTS"/*.json "$RESULTS/steps.jsonl" "$RESULTS/summary.md" "$RESULTS/suite.log" "$OUT"/ 2>/dev/null || true
    say "copied results to \$OUT ($(ls "$OUT" | wc -l) files)"
fi
say "done in $(($(date +%s) - SUITE_T0))s; results in $RESULTS"
