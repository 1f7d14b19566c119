"""The W&B mirror's vocabulary, for its writer (burnlab.dashboards.trackers) and its reader (the
analysis, burnlab.analysis.sources) alike: which dashboard key each metrics.jsonl field goes to,
where study.json travels, and how the sample artifacts are named. Imports nothing."""

# metrics.jsonl field -> dashboard key; fields not named here and not bookkeeping go under `other/`
KEYS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "stabilized_loss": "loss/stabilized",
    "val_loss_by_t": "loss_by_t/val",
    "stabilized_loss_by_t": "loss_by_t/stabilized",
    "grad_scale": "train/grad_scale",
    "step_skipped": "train/step_skipped",
    "grad_norm": "train/grad_norm",
    "skipped_nonfinite": "train/skipped_nonfinite",
    "peak_bytes": "memory/peak_bytes",
}
LOSS_FIELDS = ("train_loss", "val_loss", "stabilized_loss")  # the loss curves the analysis reads back
BOOKKEEPING = {"type", "stage", "step", "epoch", "study_epoch", "measure"}  # a row's position, not a value to chart
SAMPLE_COLUMNS = ["index", "checkpoint", "stage", "study_epoch", "prompt_set", "prompt", "seed", "image"]
STUDY_CONFIG_KEY = "study_json"  # the W&B run config key holding study.json's content
SAMPLES_ARTIFACT_TYPE = "samples"  # one artifact per checkpoint ...
SAMPLES_ARTIFACT_PREFIX = "samples-"  # ... named samples-<checkpoint_id>
