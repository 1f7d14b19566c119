#!/usr/bin/env bash
# What `make bench-train`'s reference needs beside .venv (make bench-peers runs this once):
#  - `datasets` (the example reads an imagefolder): burnlab's [bench] extra, pinned in constraints.txt;
#  - torchvision for the example's Python transforms, WITHOUT dependencies, in its own folder
#    ($VENV/bench-torchvision): PyPI's wheel next to the CPU torch in .venv would break
#    `import torchvision` for everything in .venv; bench/peers/launch_example.py adds the folder
#    and skips the C ops' registration for the example's process only;
#  - diffusers' examples/text_to_image/train_text_to_image.py, unmodified, at the commit below
#    (the example ships in no wheel or sdist), checked against its sha256.
#   usage: scripts/setup_bench_peers.sh [VENV_DIR]
#   DIFFUSERS_GIT=/path/to/diffusers(.git) takes the file from a local clone instead of GitHub.
set -euo pipefail
venv=${1:-.venv}
pip="$venv/bin/python -m pip"
# diffusers v0.40.0's release commit: the newest tag we could read (installed: 0.42.1, whose tag
# is not available here). The file changed only in its check_min_version line from v0.35.0 to
# v0.40.0, and that line (>= 0.40.0) accepts the installed 0.42.1.
commit=d035dcd7cc7c88e0a154609b62887d50bba9fdc2
upstream=examples/text_to_image/train_text_to_image.py
sha256=d4430bca96ab52aaed12d99132a4410b2db4b1114ec4cf85fb24cc0889ed8408
target=bench/peers/train_text_to_image.py

$pip install -q -c constraints.txt -e ".[bench]"
$pip install -q --no-deps -c constraints.txt --target "$venv/bench-torchvision" --upgrade torchvision

if ! echo "$sha256  $target" | sha256sum -c --status 2>/dev/null; then
    tmp=$(mktemp)
    if [ -n "${DIFFUSERS_GIT:-}" ]; then
        git --git-dir="$DIFFUSERS_GIT" show "$commit:$upstream" > "$tmp" 2>/dev/null \
            || git -C "$DIFFUSERS_GIT" show "$commit:$upstream" > "$tmp"
    else
        curl -fsSL "https://raw.githubusercontent.com/huggingface/diffusers/$commit/$upstream" -o "$tmp" || {
            echo "setup_bench_peers: could not download $upstream at $commit; set DIFFUSERS_GIT to a diffusers clone" >&2
            rm -f "$tmp"; exit 1; }
    fi
    if ! echo "$sha256  $tmp" | sha256sum -c --status; then
        echo "setup_bench_peers: $upstream at $commit does not have sha256 $sha256" >&2
        rm -f "$tmp"; exit 1
    fi
    mv "$tmp" "$target"
fi
touch "$venv/.bench-peers"
echo "bench peers ready: $target (diffusers $commit), torchvision in $venv/bench-torchvision"
