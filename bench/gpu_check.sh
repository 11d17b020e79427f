#!/usr/bin/env bash
# GPU check of detseg (bench/gpu_check.py): CUDA really used, CPU-equal results, throughput at
# batch 1 and 32 with IO binding against Ultralytics, TensorRT if present, SAM encoder time.
# Budget: <= 8 minutes (timeout 450 s on the Python part).
#
#   bash bench/gpu_check.sh [--device cuda|cpu] [--out DIR] [more bench/gpu_check.py options]
#
# On a machine without a package registry, onnxruntime-gpu (~255 MB) and the few pure-Python
# packages detseg needs that such an image may lack travel as pieces made here by
# bench/gpu_wheelhouse.sh (.gpuwhl/pNN/site.tar.xz.NN); this script joins and unpacks them
# into /tmp/detseg-site (first on PYTHONPATH). The CUDA 13 / cuDNN 9 libraries that
# onnxruntime-gpu 1.31 loads are taken from the nvidia-* pip packages already installed beside
# the image's PyTorch (their lib/ folders go on LD_LIBRARY_PATH); without them, carry the
# wheels listed by `bash bench/gpu_wheelhouse.sh --with-cuda` the same way.
# `--device cpu` runs every step on the CPU (a dry run that works here, without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SITE=/tmp/detseg-site
if compgen -G ".gpuwhl/p*/site.tar.xz.*" > /dev/null; then
    if [ ! -f "$SITE/.complete" ]; then
        echo "gpu_check: unpacking $(ls .gpuwhl/p*/site.tar.xz.* | wc -l) pieces into $SITE"
        expected=$(cat .gpuwhl/p*/SHA256 2>/dev/null | head -1 || true)
        cat $(ls .gpuwhl/p*/site.tar.xz.* | sort) > /tmp/detseg-site.tar.xz
        if [ -n "$expected" ]; then
            echo "$expected  /tmp/detseg-site.tar.xz" | sha256sum -c - || {
                echo "gpu_check: pieces missing or damaged (checksum differs): carry every .gpuwhl/pNN"; exit 2; }
        fi
        mkdir -p "$SITE" && tar -xJf /tmp/detseg-site.tar.xz -C "$SITE" && touch "$SITE/.complete"
        rm -f /tmp/detseg-site.tar.xz
    fi
fi
if [ -d "$SITE" ]; then export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# CUDA/cuDNN libraries of the nvidia-* pip packages (next to torch), for onnxruntime-gpu.
libs=$("$PY" - <<'PYEOF'
import glob, os, site, sys
roots = [p for p in sys.path if p.endswith("-packages") and os.path.isdir(p)]
print(":".join(sorted({d for r in roots for d in glob.glob(os.path.join(r, "nvidia", "*", "lib"))})))
PYEOF
)
if [ -n "$libs" ]; then export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi
"$PY" - <<'PYEOF'
import importlib, sys
missing = []
for name in ("numpy", "cv2", "onnxruntime", "pycocotools", "typer", "PIL"):
    try:
        importlib.import_module(name)
    except ImportError as exc:
        missing.append(f"{name} ({exc})")
if missing:
    sys.exit("gpu_check: missing Python packages: " + ", ".join(missing)
             + "; make them with bench/gpu_wheelhouse.sh and carry .gpuwhl")
import onnxruntime as ort
print(f"gpu_check: onnxruntime {ort.__version__} from {ort.__file__}")
PYEOF
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
export PYTHONUNBUFFERED=1
timeout 450 "$PY" bench/gpu_check.py "$@"
