#!/usr/bin/env bash
# One-command set-up: a virtual environment in .venv with the CPU build of PyTorch and spine-app (+ dev tools).
#   bash scripts/setup.sh            # CPU machine (default)
#   TORCH_SPEC="torch" bash scripts/setup.sh   # let pip choose (a CUDA build on Linux x86_64)
#   bash scripts/setup.sh --monailabel   # also the MONAI Label server (docs/monailabel.md)
#   bash scripts/setup.sh --onnx         # also ONNX export (spine-app export --onnx)
# Elsewhere than this project's machines, a CPU-only wheel comes from PyTorch's own index:
#   TORCH_INDEX=https://download.pytorch.org/whl/cpu bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# torch first: a plain "torch" requirement with no torch installed would pull a multi-GB CUDA build
if [ -n "${TORCH_INDEX:-}" ]; then
  "$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC" --index-url "$TORCH_INDEX"
else
  "$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC"
fi
EXTRAS="dev"
for option in "$@"; do
  case "$option" in
    --monailabel) EXTRAS="$EXTRAS,monailabel" ;;
    --onnx) EXTRAS="$EXTRAS,onnx" ;;
    *) echo "unknown option $option (use --monailabel, --onnx)" >&2; exit 2 ;;
  esac
done
"$VENV/bin/python" -m pip install --quiet -e ".[$EXTRAS]"
if [[ "$EXTRAS" == *monailabel* ]]; then
  # monailabel's declared dependencies pull torchvision and sam2 (a CUDA torch); its server needs neither
  "$VENV/bin/python" -m pip install --quiet --no-deps monailabel==0.8.5 pydicom-seg==0.4.1
fi
"$VENV/bin/python" -c "import torch, monai, spine_app; print('spine-app', spine_app.__version__, '| torch', torch.__version__, '| monai', monai.__version__)"
echo "ready: source $VENV/bin/activate"
