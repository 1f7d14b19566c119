"""A Hydra multirun sweep over the hi stage's learning rate: jobs run in parallel (joblib), and
the stages they share are trained once, the second job waiting on the stage's file lock."""
import json
import subprocess
import sys

from burnlab.store import read_jsonl
from study_helpers import tiny_overrides


def test_parallel_sweep_trains_shared_stages_once(tiny_model, tiny_data, tmp_path):
    overrides = [o for o in tiny_overrides(tiny_model, tiny_data, tmp_path, "burn_unet")
                 if not o.startswith("stages.unet_hi.")]
    command = [sys.executable, "-m", "burnlab.cli", "-m", *overrides, "stages.unet_hi.epochs=2",
               "stages.unet_hi.save_epochs=[2]", "stages.unet_hi.lr=1e-4,1e-3", "hydra/launcher=joblib",
               "hydra.launcher.n_jobs=2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    job_dirs = sorted(p.parent for p in (tmp_path / "burn_unet_multirun").glob("*/study.json"))
    assert [p.name for p in job_dirs] == ["job0", "job1"]
    studies = [json.loads((p / "study.json").read_text()) for p in job_dirs]
    assert [s["stages"]["unet_hi"]["lr"] for s in studies] == [1e-4, 1e-3]
    for shared in ("baseline", "unet_lo"):
        assert studies[0]["stages"][shared]["identity"] == studies[1]["stages"][shared]["identity"]
    assert studies[0]["stages"]["unet_hi"]["identity"] != studies[1]["stages"]["unet_hi"]["identity"]
    stage_dirs = list((tmp_path / "cache" / "stages").glob("*/COMPLETE"))
    assert len(stage_dirs) == 4  # baseline, unet_lo, and one unet_hi per learning rate
    baseline = tmp_path / "cache" / "stages" / studies[0]["stages"]["baseline"]["identity"]
    steps = [row["step"] for row in read_jsonl(baseline / "metrics.jsonl") if row["type"] == "train"]
    assert steps == [1, 2, 3, 4]  # trained once: not twice, not interleaved
