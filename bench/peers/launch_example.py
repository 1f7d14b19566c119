"""Runs diffusers' examples/text_to_image/train_text_to_image.py, unmodified, beside the CPU
torch wheel: the reference row of `make bench-train`.

    .venv/bin/python bench/peers/launch_example.py --pretrained_model_name_or_path ... (the example's flags)

The example imports `from torchvision import transforms` (Python transforms only). torchvision
is not in .venv: PyPI's wheel is built against the CUDA torch (its _C.so needs libc10_cuda.so,
which the CPU wheel lacks), so its C ops fail to load, and importing torchvision then raises
while it registers fake kernels for those ops. scripts/setup_bench_peers.sh puts it, without
dependencies, in TORCHVISION_DIR; this launcher adds that folder to the path and skips the one
module that registers the C ops' fake kernels — nothing the example runs calls them. Hugging
Face libraries are kept offline: the model and data are local folders.

With BURNLAB_BENCH_STEP_ENDS=FILE it also writes, at exit, a JSON list of the moments
(time.perf_counter) the example's optimizer steps ended: the example calls accelerator.log once
per step, after reading the step's loss, and that call is timestamped. Nothing else is changed.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE / "train_text_to_image.py"  # fetched by scripts/setup_bench_peers.sh (sha256-pinned)
TORCHVISION_DIR = Path(os.environ.get("BURNLAB_BENCH_TORCHVISION", HERE.parent.parent / ".venv" / "bench-torchvision"))


def prepare() -> None:
    """Makes `import torchvision` work beside the CPU torch wheel; offline hub libraries."""
    for env in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(env, "1")
    missing = [str(p) for p in (EXAMPLE, TORCHVISION_DIR / "torchvision") if not p.exists()]
    if missing:
        sys.exit(
            f"bench-train's reference is missing: {', '.join(missing)}. "
            "Run `make bench-peers` (scripts/setup_bench_peers.sh) once to fetch the diffusers example "
            "and a torchvision for its transforms."
        )
    sys.path.insert(0, str(TORCHVISION_DIR))
    # torchvision/__init__.py imports _meta_registrations, which registers fake (meta) kernels
    # for torchvision::nms, roi_align, ...; without the C library those operators do not exist
    # and the registration raises. An empty module in its place leaves transforms untouched.
    sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")


def time_steps(path: str) -> None:
    """Timestamps every accelerator.log call (one per optimizer step in the example)."""
    import accelerate

    ends, log = [], accelerate.Accelerator.log

    def timed_log(self, *args, **kwargs):
        ends.append(time.perf_counter())
        return log(self, *args, **kwargs)

    accelerate.Accelerator.log = timed_log
    atexit.register(lambda: Path(path).write_text(json.dumps(ends)))


def main() -> None:
    prepare()
    if os.environ.get("BURNLAB_BENCH_STEP_ENDS"):
        time_steps(os.environ["BURNLAB_BENCH_STEP_ENDS"])
    sys.argv = [str(EXAMPLE), *sys.argv[1:]]
    runpy.run_path(str(EXAMPLE), run_name="__main__")


if __name__ == "__main__":
    main()
