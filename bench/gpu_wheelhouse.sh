#!/usr/bin/env bash
# Prepare, here (with PyPI), what bench/gpu_check.sh needs on a GPU machine without a registry:
# onnxruntime-gpu and the small packages detseg and the Ultralytics contender need that the
# GPU image may lack, unpacked, packed as one tar.xz and split into pieces that fit the device
# tool's carry limit (64 MiB per call, working tree included):
#
#   bash bench/gpu_wheelhouse.sh [--python 3.12] [--piece-size 30M] [--with-cuda]
#
# Writes .gpuwhl/p01 ... .gpuwhl/pNN (each one piece + the SHA256 of the whole). Carry one
# folder per call (e.g. carry [".gpuwhl/p01"] with command "true"), calls back to back so that
# the machine stays warm and keeps the earlier pieces, the last one with
# `bash bench/gpu_check.sh`. --with-cuda adds the CUDA 13 / cuDNN 9 runtime wheels (~1 GB: many
# more pieces) for a machine that has the NVIDIA driver but no CUDA libraries.
set -euo pipefail
cd "$(dirname "$0")/.."
PYV=3.12; PIECE=30M; CUDA=0; PACKAGES=
while [ $# -gt 0 ]; do
    case "$1" in
        --python) PYV=$2; shift 2;;
        --piece-size) PIECE=$2; shift 2;;  # split size: 30M, 100K...
        --with-cuda) CUDA=1; shift;;
        --packages) PACKAGES=$2; shift 2;;  # replace the list (a quick test of the plumbing)
        *) echo "unknown option $1"; exit 2;;
    esac
done
exclude=$(git rev-parse --git-path info/exclude)  # keep the pieces out of git, and carried only when named
grep -qx '/.gpuwhl/' "$exclude" 2>/dev/null || echo '/.gpuwhl/' >> "$exclude"
PIP=${PIP:-python3 -m pip}
ORT=$(${PYTHON:-python3} -c "import onnxruntime as o; print(o.__version__)" 2>/dev/null || echo 1.31.1)
pkgs=("onnxruntime-gpu==$ORT" pycocotools ultralytics ultralytics-thop pooch platformdirs coloredlogs humanfriendly)
if [ -n "${PACKAGES:-}" ]; then read -r -a pkgs <<< "$PACKAGES"; fi
if [ "$CUDA" = 1 ]; then
    pkgs+=(nvidia-cuda-runtime nvidia-cublas nvidia-curand nvidia-cufft nvidia-cudnn-cu13 nvidia-cuda-nvrtc nvidia-nvjitlink)
fi
rm -rf .gpuwhl && mkdir -p .gpuwhl/wheels .gpuwhl/site
pyv=${PYV/./}
for p in "${pkgs[@]}"; do
    $PIP download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
        --abi "cp$pyv" --abi abi3 --abi none \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
        -d .gpuwhl/wheels "$p"
done
ls -la .gpuwhl/wheels
for w in .gpuwhl/wheels/*.whl; do (cd .gpuwhl/site && python3 -m zipfile -e "../../$w" .); done
tar -C .gpuwhl/site -cf - . | xz -T0 -6 > .gpuwhl/site.tar.xz
sum=$(sha256sum .gpuwhl/site.tar.xz | cut -d' ' -f1)
split -b "$PIECE" -d -a 2 .gpuwhl/site.tar.xz .gpuwhl/site.tar.xz.
n=0
for piece in .gpuwhl/site.tar.xz.[0-9][0-9]; do
    n=$((n + 1)); d=$(printf ".gpuwhl/p%02d" "$n"); mkdir -p "$d"
    mv "$piece" "$d/"; echo "$sum" > "$d/SHA256"
done
rm -rf .gpuwhl/site .gpuwhl/site.tar.xz
du -sh .gpuwhl/wheels; echo "pieces: $n x <= ${PIECE} in .gpuwhl/p01..p$(printf %02d $n); sha256 $sum"
echo "device calls: carry [\".gpuwhl/pNN\"] one per call (command: true), the last with: bash bench/gpu_check.sh"
