#!/usr/bin/env bash
# Creates the virtual environment: a CUDA build of torch where an NVIDIA GPU answers, the CPU
# build otherwise, then burnlab and its pinned dependencies (constraints.txt).
#   usage: scripts/setup_venv.sh [VENV_DIR]
set -euo pipefail
venv=${1:-.venv}
torch_version=2.13.0
python=${PYTHON:-python3}

"$python" -m venv "$venv"
pip="$venv/bin/python -m pip"
$pip install -q --upgrade pip

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found, installing the CUDA build of torch $torch_version"
    $pip install "torch==$torch_version"
else
    echo "setup: no GPU, installing the CPU build of torch $torch_version"
    # The CPU wheel comes from PyTorch's CPU index (or a local wheel folder configured for pip);
    # a bare `torch` from PyPI would be the multi-GB CUDA build.
    $pip install --retries 1 --extra-index-url https://download.pytorch.org/whl/cpu "torch==$torch_version+cpu"
fi
rm -rf burnlab.egg-info  # stale metadata here would shadow the installed entry points (cwd is on sys.path)
$pip install -c constraints.txt -e ".[dev]"
touch "$venv/.installed"
