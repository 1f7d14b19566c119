#!/usr/bin/env bash
# `make gpu-check` on the device machine, whose python3 holds a CUDA torch but not diffusers,
# hydra or omegaconf: no .venv is made (it would fetch torch). Installs wheelhouse/ (made here by
# `make gpu-wheelhouse`, carried with the working tree) into a folder of its own with no index,
# builds burnlab's wheel from this tree there (its toy weights are in the tree already), runs
# bench/gpu_check.py and copies the results file into $OUT (the device tool's folder that comes
# back) when that is set.
#   usage: scripts/gpu_check_remote.sh [gpu_check.py flags, e.g. --dry-run or --only clip]
#   the device tool: run(command="scripts/gpu_check_remote.sh", carry=["wheelhouse"], timeout_s=600)
set -euo pipefail
python=${PYTHON:-python3}
site=${SITE:-/tmp/burnlab-site}
work=${WORK:-/tmp/gpu_check}  # checkpoints of SD 1.5's size go here, never into $OUT
if ! ls wheelhouse/*.whl >/dev/null 2>&1; then
    echo "gpu_check_remote: no wheelhouse/ here; run \`make gpu-wheelhouse\` on a machine with pip access and carry it" >&2
    exit 2
fi
rm -rf "$site" /tmp/burnlab-wheel
pip_install="$python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $site"
$pip_install wheelhouse/*.whl
$python -m pip wheel -q --no-index --no-deps --no-build-isolation -w /tmp/burnlab-wheel .
rm -rf build burnlab.egg-info  # cwd is on sys.path under `python -m`: stale metadata would shadow the wheel's
$pip_install /tmp/burnlab-wheel/burnlab-*.whl
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
$python -c "import torch, diffusers, hydra, burnlab; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'diffusers', diffusers.__version__)"
status=0
$python bench/gpu_check.py --out "$work" "$@" || status=$?
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT/gpu_check"
    cp "$work"/gpu_check.json "$work"/gpu_check.md "$OUT/gpu_check/" 2>/dev/null || true
    cp -r "$work"/checks "$OUT/gpu_check/" 2>/dev/null || true
fi
exit $status
