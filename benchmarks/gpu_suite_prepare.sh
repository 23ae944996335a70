#!/usr/bin/env bash
# Prepare what benchmarks/gpu_suite.sh needs on a GPU machine that has no network, HERE (on a
# machine with PyPI access), into build/gpu_suite/ (ignored by git through /build/):
#   build/gpu_suite/whl/                   wheels of the project dependencies the GPU image
#                                          lacks (zarr, numcodecs, donfig, google-crc32c), at the
#                                          versions of the local .venv, for CPython 3.12 x86-64
#   build/gpu_suite/data/imagenet_sample/  the first GPU_SUITE_PREP_JPEGS (400) of the ImageNet
#                                          sample JPEGs (../shared does not travel, and the
#                                          whole sample, 107 MB, is over the 64 MiB carry limit)
# Then: run(command="bash benchmarks/gpu_suite.sh", carry=["build/gpu_suite"], timeout_s=540)
#
#   bash benchmarks/gpu_suite_prepare.sh
# Variables: GPU_SUITE_PREP_PYTHON (.venv/bin/python: whose versions to pin), GPU_SUITE_PREP_JPEGS,
# GPU_SUITE_PREP_SRC (../shared/data/imagenet_sample), GPU_SUITE_PREP_PYVER (3.12).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${GPU_SUITE_PREP_PYTHON:-.venv/bin/python}
N=${GPU_SUITE_PREP_JPEGS:-400}
SRC=${GPU_SUITE_PREP_SRC:-../shared/data/imagenet_sample}
PYVER=${GPU_SUITE_PREP_PYVER:-3.12}
DEST=build/gpu_suite
PKGS=(zarr numcodecs donfig google-crc32c) # not in the GPU image's package list (KINDS.md)

mkdir -p "$DEST/whl" "$DEST/data/imagenet_sample"
rm -f "$DEST"/whl/*.whl
specs=()
for p in "${PKGS[@]}"; do
    v=$("$PY" -m pip show "$p" 2>/dev/null | sed -n 's/^Version: //p')
    [[ -n $v ]] || { echo "$p is not installed in $PY: cannot pin its version" >&2; exit 2; }
    specs+=("$p==$v")
done
echo "downloading ${specs[*]} for CPython $PYVER x86-64"
plats=()
for t in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
    plats+=(--platform "${t}_x86_64")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp "${plats[@]}" -d "$DEST/whl" "${specs[@]}"

ls "$SRC"/*.JPEG >/dev/null 2>&1 || { echo "no JPEGs in $SRC" >&2; exit 2; }
rm -f "$DEST"/data/imagenet_sample/*.JPEG
ls "$SRC"/*.JPEG | sort | head -n "$N" | xargs -I{} cp {} "$DEST/data/imagenet_sample/"

ls -l "$DEST/whl"
echo "JPEGs: $(ls "$DEST"/data/imagenet_sample/*.JPEG | wc -l) in $DEST/data/imagenet_sample"
size=$(du -sm "$DEST/whl" "$DEST/data" | awk '{s += $1} END {print s}')
echo "build/gpu_suite to carry: ${size} MiB (wheels + JPEGs; the carry limit is 64 MiB with the tree)"
if ((size > 56)); then echo "warning: over 56 MiB: lower GPU_SUITE_PREP_JPEGS" >&2; fi
