"""A chain of stages needs the memory of one stage: after each stage the runner lets go of its
models, gradients and optimizer state, and each stage's peak memory is recorded."""

import gc

import torch

from burnlab.launch.runner import StudyRunner
from burnlab.store.files import read_jsonl
from study_helpers import run_study


def live_tensor_bytes() -> int:
    gc.collect()
    return sum(o.numel() * o.element_size() for o in gc.get_objects() if isinstance(o, torch.Tensor) and not o.is_meta)


def test_memory_after_each_stage_returns_to_what_the_next_needs(tiny_model, tiny_data, tmp_path, monkeypatch):
    after_stage = {}
    original = StudyRunner.run_stage

    def measured(self, name, *args, **kwargs):
        original(self, name, *args, **kwargs)
        after_stage[name] = live_tensor_bytes()

    monkeypatch.setattr(StudyRunner, "run_stage", measured)
    study, _ = run_study(tiny_model, tiny_data, tmp_path, "sampling.testing_plan=false")
    unet = sum(
        p.numel() * 4
        for p in __import__("diffusers").UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet").parameters()
    )
    order = ["baseline", "unet_lo", "unet_hi", "te_lo", "te_hi"]
    assert list(after_stage) == order
    # one stage's UNet with AdamW state is 4x its weights; five kept stages would add far more
    growth = after_stage["te_hi"] - after_stage["baseline"]
    assert growth < unet / 2, f"live tensors grew by {growth} bytes over four stages (UNet: {unet} bytes)"
    for name in order:
        rows = [
            r
            for r in read_jsonl(tmp_path / "followfox" / study["stages"][name]["dir"] / "metrics.jsonl")
            if r["type"] == "memory"
        ]
        assert len(rows) == 1 and rows[0]["measure"] == "rss" and rows[0]["peak_bytes"] > 10 * 2**20
