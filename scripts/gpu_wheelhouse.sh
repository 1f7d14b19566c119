#!/usr/bin/env bash
# Wheels the device machine lacks for `make gpu-check`, into wheelhouse/ (git-ignored; carried to
# the device with `carry: ["wheelhouse"]`: the working tree and the carried paths, 64 MiB in all).
#   usage: scripts/gpu_wheelhouse.sh [OUT_DIR]      (make gpu-wheelhouse)
#   PY_VERSION=3.12 (the device image's python3: Python 3.12.3 with CUDA torch, per the
#   workplace's device notes); VENV=.venv (where the pinned versions are read).
# Which wheels: burnlab's runtime dependency tree as installed in .venv (pinned by
# constraints.txt), less torch's own tree and less what the device image already holds
# (DEVICE_HAS, from the workplace's package list), but always the libraries whose version
# burnlab is tested with (PINNED: the image's transformers 5.17 / huggingface_hub 1.33 are
# older than constraints.txt's). Left out on purpose: wandb (imported only when W&B is on;
# gpu-check runs with it off). `pip download --no-deps` for linux x86_64 and that python.
set -euo pipefail
out=${1:-wheelhouse}
venv=${VENV:-.venv}
py_version=${PY_VERSION:-3.12}
py="$venv/bin/python"
PINNED="diffusers hydra-core omegaconf antlr4-python3-runtime transformers tokenizers huggingface_hub hf-xet accelerate safetensors peft"
DEVICE_HAS="absl-py accelerate annotated-doc anyio certifi charset-normalizer click cloudpickle contourpy cycler filelock fonttools fsspec grpcio h11 hf-xet httpcore httpx huggingface-hub idna jinja2 joblib kiwisolver markdown markdown-it-py markupsafe matplotlib mdurl mpmath networkx numpy packaging pandas peft pillow pluggy protobuf psutil pyarrow pygments pyparsing python-dateutil pyyaml regex requests rich safetensors setuptools shellingham six sympy tensorboard tensorboard-data-server tokenizers torch tqdm transformers typer typing-extensions urllib3 werkzeug xxhash zipp"

rm -rf "$out"
mkdir -p "$out"
# name==version of every wheel to fetch
"$py" - "$PINNED" "$DEVICE_HAS" > "$out/requirements.txt" <<'PY'
import importlib.metadata as md
import re
import sys

from packaging.requirements import Requirement

pinned, device_has = ({re.sub(r"[-_.]+", "-", n).lower() for n in arg.split()} for arg in sys.argv[1:3])
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
# torch: the device's CUDA build; wandb: see above; hf-xet: huggingface_hub's Xet download backend,
# imported only to download (the device reaches no hub), 4.3 MB the 64 MiB carry cannot spare
# since the toy SDXL's weights joined the tree (loading models without it: tested here)
skip = {"torch", "wandb", "burnlab", "hf-xet"}
seen, todo = set(), ["burnlab"]
while todo:
    name = todo.pop()
    for text in md.requires(name) or []:
        req = Requirement(text)
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        dep = norm(req.name)
        if dep in seen or dep in skip or (dep in device_has and dep not in pinned):
            continue  # the image's own copy serves, with its own dependencies
        seen.add(dep)
        todo.append(dep)
for dep in sorted(seen):
    print(f"{dep}=={md.version(dep)}")
PY
while read -r requirement; do
    # a release with no wheel (antlr4-python3-runtime 4.9.3, hydra's pin) is pure Python: built here
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$py_version" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$out" "$requirement" 2>/dev/null \
        || "$py" -m pip wheel -q --no-deps -w "$out" "$requirement"
done < "$out/requirements.txt"
# burnlab's own wheel only on request (BURNLAB_WHEEL=1): it holds the toy's 24 MB of weights,
# which the carried working tree holds already, and tree + wheels must fit in 64 MiB;
# scripts/gpu_check_remote.sh builds the wheel there from the tree instead
if [ "${BURNLAB_WHEEL:-0}" = 1 ]; then
    "$py" -m pip wheel -q --no-deps --no-build-isolation -w "$out" .
    rm -rf build burnlab.egg-info  # the build's leftovers (cwd is on sys.path: stale metadata would shadow the venv's)
fi
du -sh "$out"
ls "$out"
# what travels: the tracked tree and the wheelhouse
bytes=$(( $(du -sb "$out" | cut -f1) + $(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) ))
echo "working tree + $out: $((bytes / 1024 / 1024)) MiB of the 64 MiB a device call carries"
if [ "$bytes" -gt $((64 * 1024 * 1024)) ]; then
    echo "gpu_wheelhouse: over the 64 MiB the device tool carries" >&2
    exit 1
fi
