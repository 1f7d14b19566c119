"""Run sources: the local run folder and the W&B public API map into one analysis model.

    .venv/bin/python -m pytest tests/analysis/test_sources.py -q

W&B is exercised through a stand-in shaped like wandb.Api (no server can be reached here),
holding what burnlab's W&B mirror logs: a run per branch grouped by the study, the config with
`study_json`, history rows as `loss/<kind>` beside `study_epoch` and `stage/index`, and a
`samples-<checkpoint_id>` artifact per checkpoint.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from burnlab.analysis.run import AnalysisError, LongCaptions
from burnlab.analysis.sources import LocalRun, WandbRun, history_losses, open_run
from burnlab.config.compose import flatten_config
from burnlab.dashboards.trackers import dashboard_values


class StandInArtifact:
    def __init__(self, name: str, files: dict[str, Path]):
        self.name, self.type, self.files = name, "samples", files

    def download(self, root: str) -> str:
        for relative, source in self.files.items():
            target = Path(root) / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        return root


class StandInRun:
    def __init__(self, name: str, config: dict, history: list[dict], artifacts: list, group: str | None = None):
        self.name, self.config, self.history_rows, self.artifacts = name, config, history, artifacts
        self.id, self.group = name, group

    def scan_history(self):
        return iter(self.history_rows)

    def logged_artifacts(self):
        return list(self.artifacts)


class StandInApi:
    def __init__(self, runs: dict[str, StandInRun]):
        self.by_path = runs

    def run(self, path: str) -> StandInRun:
        if path not in self.by_path:
            raise ValueError(f"Could not find run {path}")
        return self.by_path[path]

    def runs(self, project: str, filters: dict) -> list[StandInRun]:
        """wandb.Api.runs(entity/project, filters={"group": ...})"""
        return [
            run
            for path, run in self.by_path.items()
            if path.startswith(project + "/") and run.group == filters["group"]
        ]


def mirrored(run_dir: Path) -> dict[str, StandInRun]:
    """What burnlab's W&B mirror holds for a local run: one run per branch, keyed by its path
    `team/burnlab/<study>-<branch>` (rows mapped and config flattened by burnlab's own
    dashboard_values and flatten_config, so that the stand-in follows the writer)."""
    study = json.loads((run_dir / "study.json").read_text())
    files: dict[str, dict[str, Path]] = {}
    prompts = {}
    for line in (run_dir / "samples.jsonl").read_text().splitlines():
        row = json.loads(line)
        files.setdefault(row["checkpoint_id"], {})[f"{row['prompt_set']}/{row['seed']}.png"] = run_dir / row["path"]
        prompts[row["prompt_set"]] = {"prompt": row["prompt"], "activation": row["activation"], "expect": row["expect"]}
    runs = {}
    for branch, info in study["branches"].items():
        history = []
        for index, stage in enumerate(info["stages"]):
            for line in (run_dir / study["stages"][stage]["dir"] / "metrics.jsonl").read_text().splitlines():
                row = json.loads(line)
                history.append(
                    {
                        "_step": len(history),
                        "study_epoch": row["study_epoch"],
                        "stage/index": index,
                        **dashboard_values(row),
                    }
                )
        config = flatten_config(
            {"name": study["study"], "data": {"path": "../data/style"}, "sampling": {"prompts": prompts}}
        )
        config.update(study_json=json.dumps(study), branch=branch, stages=info["stages"], study_run=run_dir.name)
        plan = {entry["checkpoint_id"] for entry in study["testing_plan"][branch]}
        artifacts = [
            StandInArtifact(f"samples-{checkpoint}:v0", pngs)
            for checkpoint, pngs in files.items()
            if checkpoint in plan
        ]
        name = f"{run_dir.name}-{branch}"
        runs[f"team/burnlab/{name}"] = StandInRun(name, config, history, artifacts, group=run_dir.name)
    return runs


def sample_keys(run) -> set:
    return {
        (
            s.branch,
            s.index,
            s.label,
            s.checkpoint_id,
            s.prompt_set,
            s.prompt,
            s.activation,
            s.seed,
            tuple(sorted(s.expect.items())),
            s.image.read_bytes(),
        )
        for s in run.samples
    }


def test_local_run_maps_study_losses_and_samples(shared_store):
    run = LocalRun(shared_store / "burn_unet").load()
    assert run.name == "burn_unet" and run.problems == []
    branch = run.branches["unet_hi"]
    assert branch.component == ("unet",) and branch.stages == ("baseline", "unet_lo", "unet_hi")
    assert [c.label for c in branch.plan][:3] == ["0 base", "1 baseline", "2 unet_lo e2"]
    assert [c.study_epoch for c in branch.plan] == [0, 5, 7, 11, 15, 17, 21, 25]
    assert {row.kind for row in run.losses["unet_lo"]} == {"train", "val"}
    assert len(run.samples) == 8 * 2 * 9
    assert run.prompt_sets() == ["person", "sunglasses"]
    assert run.config["data"]["path"] == "../data/style"


def test_wandb_run_maps_to_the_same_model_as_the_local_run(shared_store, tmp_path):
    api = StandInApi({**mirrored(shared_store / "burn_te"), **mirrored(shared_store / "burn_unet")})
    remote = WandbRun("team/burnlab/burn_te-te_hi", api=api, download_root=tmp_path).load()
    local = LocalRun(shared_store / "burn_te").load()
    assert remote.name == local.name == "burn_te"
    assert remote.problems == []
    assert remote.stages == local.stages and remote.branches == local.branches
    assert remote.losses == local.losses
    assert remote.config["data"]["path"] == "../data/style"
    assert sample_keys(remote) == sample_keys(local)


def test_wandb_run_without_study_json_is_a_clear_error(shared_store, tmp_path):
    stand_ins = mirrored(shared_store / "burn_te")
    del stand_ins["team/burnlab/burn_te-te_hi"].config["study_json"]
    with pytest.raises(AnalysisError, match="config key 'study_json' is missing"):
        WandbRun("team/burnlab/burn_te-te_hi", api=StandInApi(stand_ins), download_root=tmp_path).load()


def test_unknown_wandb_run_and_bad_path_are_clear_errors(tmp_path):
    with pytest.raises(AnalysisError, match="team/burnlab/nope could not be read"):
        WandbRun("team/burnlab/nope", api=StandInApi({}), download_root=tmp_path).load()
    with pytest.raises(AnalysisError, match="entity/project/run_id"):
        WandbRun("just-a-name")


def test_wandb_without_a_key_says_so_before_importing_wandb(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    with pytest.raises(AnalysisError, match="WANDB_API_KEY is unset and no netrc entry"):
        open_run("wandb:team/burnlab/abc123")


def test_analysis_does_not_import_wandb_or_training_code():
    code = (
        "import sys, burnlab.analysis.cli, burnlab.analysis.products; "
        "print(sorted(m for m in sys.modules if m == 'wandb' or "
        "(m.startswith('burnlab') and not m.startswith('burnlab.analysis'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # only the run store's layout and file primitives and the W&B mirror's keys, no training code
    assert result.stdout.strip() == (
        "['burnlab', 'burnlab.dashboards', 'burnlab.dashboards.keys', "
        "'burnlab.dashboards.wandb_key', 'burnlab.store', 'burnlab.store.files', "
        "'burnlab.store.layout']"
    )


def test_not_a_run_and_missing_folder_are_clear_errors(tmp_path):
    with pytest.raises(AnalysisError, match="has no study.json"):
        LocalRun(tmp_path).load()
    with pytest.raises(AnalysisError, match="does not exist"):
        LocalRun(tmp_path / "nowhere").load()


def test_study_json_missing_a_key_names_it(store):
    study_path = store / "burn_unet" / "study.json"
    study = json.loads(study_path.read_text())
    del study["testing_plan"]
    study_path.write_text(json.dumps(study))
    with pytest.raises(AnalysisError, match="key 'testing_plan' is missing"):
        LocalRun(store / "burn_unet").load()


def test_a_truncated_last_line_is_noted_and_skipped(store):
    samples_path = store / "burn_unet" / "samples.jsonl"
    text = samples_path.read_text()
    samples_path.write_text(text[:-40])  # an interrupted append: the last row cut short
    run = LocalRun(store / "burn_unet").load()
    assert len(run.samples) == 8 * 2 * 9 - 1
    assert any("last line (144) is cut short" in problem for problem in run.problems)


def test_a_corrupt_line_mid_file_names_file_and_line(store):
    metrics_path = store / "cache" / "stages" / "unet_lo0" / "metrics.jsonl"
    lines = metrics_path.read_text().splitlines()
    lines[3] = lines[3][:20]
    metrics_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(AnalysisError, match=r"unet_lo0/metrics.jsonl: line 4 is not valid JSON"):
        LocalRun(store / "burn_unet").load()


def test_missing_checkpoints_and_images_are_listed(store):
    samples_path = store / "burn_unet" / "samples.jsonl"
    rows = [json.loads(line) for line in samples_path.read_text().splitlines()]
    samples_path.write_text("".join(json.dumps(row) + "\n" for row in rows if row["index"] != 7))
    (store / "cache" / "samples" / "unet_lo0-e2-s1" / "person" / "1003.png").unlink()
    shutil.rmtree(store / "cache" / "stages" / "unet_hi0")
    run = LocalRun(store / "burn_unet").load()
    problems = "\n".join(run.problems)
    assert "checkpoint '7 unet_hi e10' has no samples" in problems
    assert "unet_lo0-e2-s1/person/1003.png is missing" in problems
    assert "unet_hi0/metrics.jsonl is missing" in problems


def test_wandb_history_of_one_run_per_study_still_reads():
    """Runs logged before per-branch runs: `<stage>/<key>` beside `study_epoch`."""
    rows = [
        {"_step": 0, "study_epoch": 0.5, "baseline/train_loss": 0.5, "baseline/lr_unet": 1e-6},
        {"_step": 1, "study_epoch": 1, "baseline/val_loss": 0.25, "baseline/stabilized_loss": 0.125},
    ]
    losses = history_losses(rows, ["baseline"], "W&B run x")
    assert [(r.kind, r.study_epoch, r.train_loss, r.val_loss, r.stabilized_loss) for r in losses["baseline"]] == [
        ("train", 0.5, 0.5, None, None),
        ("val", 1.0, None, 0.25, 0.125),
    ]


LONG_CAPTIONS = {
    "limit": 77,
    "count": 3,
    "by_set": {"train": 2, "validation": 1},
    "examples": [
        {"set": "train", "file": "painting0.txt", "cut": "zorblax style"},
        {"set": "validation", "file": "painting3.txt", "cut": "style"},
    ],
}


def record_long_captions(run_dir: Path, record) -> None:
    """study.json's `long_captions`, as burnlab writes it when the study starts."""
    study = json.loads((run_dir / "study.json").read_text())
    (run_dir / "study.json").write_text(json.dumps(study | {"long_captions": record}))


def test_long_captions_are_read_from_the_run_and_from_wandb(store, tmp_path):
    record_long_captions(store / "burn_te", LONG_CAPTIONS)
    local = LocalRun(store / "burn_te").load()
    assert local.long_captions == LongCaptions(
        count=3, limit=77, examples=(("painting0.txt", "zorblax style"), ("painting3.txt", "style"))
    )
    remote = WandbRun(
        "team/burnlab/burn_te-te_hi", api=StandInApi(mirrored(store / "burn_te")), download_root=tmp_path
    ).load()
    assert remote.long_captions == local.long_captions
    assert LocalRun(store / "burn_unet").load().long_captions is None  # a store from before the record


@pytest.mark.parametrize(
    "record, message",
    [
        ("many", r"long_captions: expected a JSON object \(a list of \{file, cut\} objects under 'examples'\)"),
        (LONG_CAPTIONS | {"count": "3"}, r"long_captions: 'count' is '3'; expected the number of captions"),
        (LONG_CAPTIONS | {"examples": "painting0.txt"}, r"'examples' is 'painting0.txt'; expected a list"),
        (LONG_CAPTIONS | {"examples": [{"file": "painting0.txt"}]}, r"long_captions.examples: key 'cut' is missing"),
    ],
)
def test_a_bad_long_captions_record_names_what_is_wrong(store, record, message):
    record_long_captions(store / "burn_te", record)
    with pytest.raises(AnalysisError, match=message):
        LocalRun(store / "burn_te").load()
