#!/usr/bin/env bash
# Install critic-unlearn into a virtualenv with the pinned constraints. Shared by `make setup`,
# CI and the container build, so a broken install step fails CI, not a user's build.
#   scripts/install.sh VENV_DIR [EXTRAS]     e.g. scripts/install.sh .venv dev
set -euo pipefail
venv=${1:-.venv}
extras=${2:-dev}
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x "$venv/bin/python" ]; then
  echo "creating $venv with $($py --version)"
  "$py" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip setuptools wheel
# constraints pin torch/torchvision/ray exactly; pyproject keeps ranges for everything else
"$venv/bin/python" -m pip install --quiet -c "$here/constraints.txt" -e "$here[$extras]"
"$venv/bin/python" -c "import torch, torchvision, open_clip, diffusers, peft, ray, redis; \
print(f'installed: torch {torch.__version__}, diffusers {diffusers.__version__}, ray {ray.__version__}')"
