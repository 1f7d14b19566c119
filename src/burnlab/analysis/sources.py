"""Run sources: a local run folder (docs/run_store.md) or a W&B run, mapped into burnlab.analysis.run.

    from burnlab.analysis.sources import open_run
    open_run("runs/burn_unet")                    # LocalRun: study.json, metrics.jsonl, samples.jsonl
    open_run("wandb:entity/project/run_id")       # WandbRun: wandb.Api (needs a W&B key)

What the W&B mirror holds (burnlab/dashboards/trackers.py writes it), and what is read from it:
  - one W&B run per branch, named `<study>-<leaf>`, grouped by the study run; the run given is
    read with the other runs of its group (the branches of one study), each stage once;
  - run.config: the resolved config, flattened to `a.b.c` keys (or nested), `branch`, `stages`
    (the branch's stages in order), plus the content of study.json under the key `study_json`
    (a JSON string, or the object itself; its `long_captions` too); prompts, activation and
    `expect` come from its `sampling.prompts`;
  - history rows: each metrics.jsonl row as `loss/train`, `loss/val`, `loss/stabilized` beside
    `study_epoch` and `stage/index` (the stage's position in `stages`);
  - one artifact of type `samples` per checkpoint, named `samples-<checkpoint_id>`, holding
    `<prompt_set>/<seed>.png`.
Runs logged before per-branch runs (one run per study, `<stage>/<key>` history keys) still read.
Input that cannot be read raises AnalysisError naming the file or key, the value and what is
expected; what is merely missing (a stage's metrics, a checkpoint's samples, a line cut short
by an interrupted writer) goes to Run.problems and the report says so.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import yaml

from burnlab.analysis.run import (
    AnalysisError,
    Branch,
    Checkpoint,
    LongCaptions,
    LossRow,
    Run,
    SampleRow,
    Stage,
)
from burnlab.dashboards.keys import (
    KEYS,
    LOSS_FIELDS,
    SAMPLES_ARTIFACT_PREFIX,
    SAMPLES_ARTIFACT_TYPE,
    STUDY_CONFIG_KEY,
)
from burnlab.dashboards.wandb_key import (
    wandb_key_present,  # the same rule as training's W&B mode `auto`
)
from burnlab.store.layout import CONFIG, METRICS, SAMPLES_INDEX, STUDY, RecordError, required

SPEC_DOC = "see docs/run_store.md"
WANDB_PREFIX = "wandb:"


def open_run(spec: str, *, download_root: Path | None = None) -> Run:
    """A run from a local folder path, or from W&B when `spec` is `wandb:entity/project/run_id`."""
    if spec.startswith(WANDB_PREFIX):
        return WandbRun(spec[len(WANDB_PREFIX) :], download_root=download_root).load()
    return LocalRun(spec).load()


# ----------------------------------------------------------------------------- shared mapping
def require(mapping: Any, key: str, where: str, expected: str) -> Any:
    """mapping[key], or an AnalysisError naming where the key was looked for and what it must be
    (the run store's own rule for its records, burnlab.store.layout.required)."""
    try:
        return required(mapping, key, where, expected)
    except RecordError as error:
        raise AnalysisError(str(error)) from None


def parse_jsonl(lines: list[str], where: str, problems: list[str]) -> list[dict]:
    """JSON objects, one per line. A last line cut short (an interrupted writer) is noted in
    `problems` and skipped; a bad line anywhere else means the file is corrupt: AnalysisError."""
    rows = []
    last = max((number for number, line in enumerate(lines, 1) if line.strip()), default=0)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            if number == last:
                problems.append(
                    f"{where}: the last line ({number}) is cut short, as an "
                    f"interrupted write leaves it ({line[:60]!r}); it was ignored."
                )
                break
            raise AnalysisError(
                f"{where}: line {number} is not valid JSON ({error.msg}): "
                f"{line[:80]!r}; expected one JSON object per line ({SPEC_DOC})."
            )
        if not isinstance(row, dict):
            raise AnalysisError(
                f"{where}: line {number} is {line[:80]!r}; expected a JSON object per line ({SPEC_DOC})."
            )
        rows.append(row)
    return rows


def parse_study(study: Any, where: str) -> tuple[dict[str, Stage], dict[str, Branch]]:
    """Stages and branches (with their testing plans) from the content of study.json."""
    try:
        stages = {
            name: Stage.from_json(name, raw, where)
            for name, raw in require(study, "stages", where, "a mapping of stage name to stage").items()
        }
        plans = require(study, "testing_plan", where, "a mapping of branch name to checkpoints")
        branches = {}
        for name, raw in require(study, "branches", where, "a mapping of branch name to branch").items():
            at = f"{where}: branches.{name}"
            branch_stages = tuple(require(raw, "stages", at, "the stage names from base to leaf"))
            unknown = [stage for stage in branch_stages if stage not in stages]
            if unknown:
                raise AnalysisError(
                    f"{at}: stages {unknown} are not defined under 'stages' (defined: {sorted(stages)}); {SPEC_DOC}."
                )
            plan = tuple(
                Checkpoint.from_json(entry, f"{where}: testing_plan.{name}")
                for entry in require(plans, name, f"{where}: testing_plan", f"the testing plan of branch '{name}'")
            )
            component = raw.get("component", stages[branch_stages[-1]].train)
            branches[name] = Branch(name, tuple(component), branch_stages, plan)
    except RecordError as error:
        raise AnalysisError(str(error)) from None
    return stages, branches


def parse_long_captions(study: dict, where: str) -> LongCaptions | None:
    """study.json's `long_captions`; None for a run written before burnlab recorded it."""
    raw = study.get("long_captions")
    if raw is None:
        return None
    at = f"{where}: long_captions"
    examples = require(raw, "examples", at, "a list of {file, cut} objects")
    if not isinstance(examples, list):
        raise AnalysisError(
            f"{at}: 'examples' is {str(examples)[:80]!r}; expected a list of {{file, cut}} objects ({SPEC_DOC})."
        )
    return LongCaptions(
        count=whole_number(raw, "count", at, "the number of captions longer than the limit"),
        limit=whole_number(raw, "limit", at, "the tokenizer's limit in tokens"),
        examples=tuple(
            (
                str(require(example, "file", f"{at}.examples", "the caption's file")),
                str(require(example, "cut", f"{at}.examples", "the words cut")),
            )
            for example in examples
        ),
    )


def whole_number(mapping: dict, key: str, where: str, expected: str) -> int:
    value = require(mapping, key, where, expected)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise AnalysisError(
            f"{where}: '{key}' is {repr(value)[:80]}; expected {expected}, a whole number ({SPEC_DOC})."
        )
    return value


def parse_losses(rows: Iterable[dict], where: str) -> dict[str, list[LossRow]]:
    """Loss rows per stage from metrics rows; rows of other types (and W&B's own) are skipped."""
    losses: dict[str, list[LossRow]] = defaultdict(list)
    for row in rows:
        kind = row.get("type")
        if kind not in ("train", "val"):
            continue
        at = f"{where}: {kind} row at step {row.get('step', '?')}"
        stage = str(require(row, "stage", at, "the stage name"))
        losses[stage].append(
            LossRow(
                kind=kind,
                stage=stage,
                study_epoch=float(require(row, "study_epoch", at, "the epoch on the branch's axis")),
                train_loss=row.get("train_loss"),
                val_loss=row.get("val_loss"),
                stabilized_loss=row.get("stabilized_loss"),
            )
        )
    return dict(losses)


def parse_sample(row: dict, base_dir: Path, where: str) -> SampleRow:
    """A samples.jsonl row; its `path` is relative to the file holding the row."""

    def field(key: str, expected: str) -> Any:
        return require(row, key, where, expected)

    return SampleRow(
        branch=str(field("branch", "the branch name")),
        index=int(field("index", "the checkpoint's index in the testing plan")),
        label=str(field("label", "the checkpoint's label")),
        checkpoint_id=str(field("checkpoint_id", "the checkpoint's identity")),
        prompt_set=str(field("prompt_set", "the prompt set's name")),
        prompt=str(row.get("prompt", "")),
        activation=bool(row.get("activation", False)),
        seed=int(field("seed", "the sampling seed")),
        image=Path(os.path.normpath(base_dir / str(field("path", "the PNG's path relative to this file")))),
        expect=dict(row.get("expect") or {}),
    )


def plan_problems(branches: dict[str, Branch], samples: list[SampleRow]) -> list[str]:
    """Plan checkpoints with no samples, samples of unknown branches, and sample files that
    are not there."""
    sampled = {(row.branch, row.index) for row in samples}
    problems = [
        f"branch {branch.name}: checkpoint '{checkpoint.label}' has no samples "
        f"(not sampled yet, or its stage did not finish)."
        for branch in branches.values()
        for checkpoint in branch.plan
        if (branch.name, checkpoint.index) not in sampled
    ]
    unknown = sorted({row.branch for row in samples} - set(branches))
    problems += [f"sample rows name branch {name}, which study.json does not define; ignored." for name in unknown]
    missing = sorted({str(row.image) for row in samples if not row.image.is_file()})
    problems += [f"sample image {path} is missing." for path in missing]
    return problems


# ----------------------------------------------------------------------------- local folder
class LocalRun:
    """A run folder: config.yaml, study.json, samples.jsonl, and the stages' metrics.jsonl."""

    def __init__(self, path: str | Path):
        self.dir = Path(path)

    def load(self) -> Run:
        study_path = self.dir / STUDY
        if not self.dir.is_dir():
            raise AnalysisError(
                f"Run folder {self.dir} does not exist (or is not a folder); "
                f"expected a run directory written by burnlab, holding study.json, "
                f"samples.jsonl and config.yaml ({SPEC_DOC})."
            )
        if not study_path.is_file():
            raise AnalysisError(
                f"{self.dir} is not a burnlab run: it has no study.json. Expected "
                f"a run directory written by burnlab (e.g. runs/burn_unet), holding "
                f"study.json, samples.jsonl and config.yaml ({SPEC_DOC})."
            )
        problems: list[str] = []
        study = read_json(study_path)
        stages, branches = parse_study(study, str(study_path))
        losses = {}
        for name, raw in study["stages"].items():
            stage_dir = raw.get("dir")
            if stage_dir is None:
                problems.append(f"{study_path}: stage {name} has no 'dir'; its losses are unknown.")
                continue
            metrics_path = self.dir / stage_dir / METRICS
            if not metrics_path.is_file():
                problems.append(f"stage {name}: {metrics_path} is missing; no loss curve for it.")
                continue
            losses.update(parse_losses(read_jsonl(metrics_path, problems), str(metrics_path)))
        samples = self.read_samples(problems)
        problems += plan_problems(branches, samples)
        problems += [
            f"stage {stage.name} is {stage.status}." for stage in stages.values() if stage.status != "complete"
        ]
        return Run(
            name=str(study.get("study") or self.dir.name),
            location=str(self.dir),
            stages=stages,
            branches=branches,
            losses=losses,
            samples=samples,
            config=self.read_config(problems),
            problems=problems,
            local_dir=self.dir,
            long_captions=parse_long_captions(study, str(study_path)),
        )

    def read_samples(self, problems: list[str]) -> list[SampleRow]:
        path = self.dir / SAMPLES_INDEX
        if not path.is_file():
            problems.append(f"{path} is missing: the run has not been sampled; no grids or sample metrics.")
            return []
        return [
            parse_sample(row, path.parent, f"{path}: row {number}")
            for number, row in enumerate(read_jsonl(path, problems), 1)
        ]

    def read_config(self, problems: list[str]) -> dict:
        path = self.dir / CONFIG
        if not path.is_file():
            problems.append(
                f"{path} is missing: data.path is unknown, so the style and memorisation metrics are skipped."
            )
            return {}
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise AnalysisError(
                f"{path} is not valid YAML ({error}); expected the resolved config that burnlab writes ({SPEC_DOC})."
            ) from None
        return config if isinstance(config, dict) else {}


def read_text_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise AnalysisError(f"{path} cannot be read ({error}); expected a UTF-8 text file ({SPEC_DOC}).") from None


def read_json(path: Path) -> Any:
    return parse_json("\n".join(read_text_lines(path)), str(path), f"the file burnlab writes ({SPEC_DOC})")


def parse_json(text: str, where: str, expected: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise AnalysisError(f"{where} is not valid JSON ({error}); expected {expected}.") from None


def read_jsonl(path: Path, problems: list[str]) -> list[dict]:
    return parse_jsonl(read_text_lines(path), str(path), problems)


# ----------------------------------------------------------------------------- W&B
def connect_wandb():
    """wandb.Api(), imported only now, and only when a key exists."""
    if not wandb_key_present():
        raise AnalysisError(
            "Reading a run from W&B needs an API key, and none was found: "
            "WANDB_API_KEY is unset and no netrc entry exists for the W&B host "
            "(run `wandb login`, or set WANDB_API_KEY). To analyse a local run, "
            "pass its folder instead (e.g. runs/burn_unet)."
        )
    import wandb

    try:
        return wandb.Api()
    except Exception as error:  # the client's own errors: a malformed key, an unreachable host
        raise AnalysisError(
            f"The W&B API could not start ({error}); expected a valid key (`wandb login`) and a reachable W&B server."
        ) from None


class WandbRun:
    """A run read through the W&B public API (`api` is injectable: tests pass a stand-in)."""

    def __init__(self, path: str, *, api=None, download_root: Path | None = None):
        if not re.fullmatch(r"[^/\s]+/[^/\s]+/[^/\s]+", path):
            raise AnalysisError(
                f"W&B run path {path!r} is not of the form entity/project/run_id "
                f"(as in wandb:my-team/burnlab/1a2b3c4d)."
            )
        self.path = path
        self.where = f"W&B run {path}"
        self.api = api
        self.download_root = download_root

    def load(self) -> Run:
        api = self.api if self.api is not None else connect_wandb()
        try:
            wandb_run = api.run(self.path)
        except Exception as error:  # the client raises its own error types for network/auth
            raise AnalysisError(
                f"{self.where} could not be read ({error}); expected an existing run you have access to."
            ) from None
        config = nested(dict(wandb_run.config))
        study = config.pop(STUDY_CONFIG_KEY, None)
        if isinstance(study, str):
            study = parse_json(study, f"{self.where}: config.{STUDY_CONFIG_KEY}", "the content of the run's study.json")
        if not isinstance(study, dict):
            raise AnalysisError(
                f"{self.where}: config key '{STUDY_CONFIG_KEY}' is "
                f"{'missing' if study is None else repr(study)[:80]}; expected "
                f"the content of the run's study.json, which burnlab logs there."
            )
        stages, branches = parse_study(study, f"{self.where}: config.{STUDY_CONFIG_KEY}")
        problems: list[str] = []
        siblings = self.branch_runs(api, wandb_run, config)
        losses: dict[str, list[LossRow]] = {}
        for run in siblings:  # a stage shared by branches (the baseline) is in each; read once
            run_config = run.config if run is not wandb_run else config
            found = history_losses(
                run.scan_history(), list(stages), self.where, branch_stages=nested(dict(run_config)).get("stages")
            )
            losses.update({stage: rows for stage, rows in found.items() if stage not in losses})
        losses = {stage: losses[stage] for stage in stages if stage in losses}
        problems += [f"{self.where}: no loss rows for stage {stage}." for stage in stages if stage not in losses]
        samples = self.read_samples(siblings, branches, config, problems)
        problems += plan_problems(branches, samples)
        return Run(
            name=str(study.get("study") or wandb_run.name),
            location=self.where,
            stages=stages,
            branches=branches,
            losses=losses,
            samples=samples,
            config=config,
            problems=problems,
            long_captions=parse_long_captions(study, f"{self.where}: config.{STUDY_CONFIG_KEY}"),
        )

    def branch_runs(self, api, wandb_run, config: dict) -> list:
        """The run given, then the other branches' runs of its study (its W&B group)."""
        group = getattr(wandb_run, "group", None)
        if "branch" not in config or not group:
            return [wandb_run]
        project = self.path.rsplit("/", 1)[0]
        try:
            others = [run for run in api.runs(project, filters={"group": group}) if run.id != wandb_run.id]
        except Exception as error:  # the client's own errors
            raise AnalysisError(
                f"{self.where}: the other runs of group {group} could not be listed ({error})."
            ) from None
        return [wandb_run, *others]

    def read_samples(
        self, runs: list, branches: dict[str, Branch], config: dict, problems: list[str]
    ) -> list[SampleRow]:
        """Download each `samples` artifact and lay its images onto every branch's plan."""
        prompts = (config.get("sampling") or {}).get("prompts") or {}
        root = self.download_root or Path(tempfile.mkdtemp(prefix="burnlab-wandb-"))
        images: dict[str, list[tuple[str, int, Path]]] = defaultdict(list)
        artifacts = {artifact.name: artifact for run in runs for artifact in run.logged_artifacts()}
        for artifact in artifacts.values():  # a checkpoint shared by branches: one artifact
            if artifact.type != SAMPLES_ARTIFACT_TYPE:
                continue
            checkpoint_id = artifact.name.split(":")[0].removeprefix(SAMPLES_ARTIFACT_PREFIX)
            if checkpoint_id in images:
                continue
            folder = Path(artifact.download(root=str(root / re.sub(r"[^\w.-]", "_", artifact.name))))
            for png in sorted(folder.glob("*/*.png")):
                if not png.stem.isdigit():
                    problems.append(
                        f"W&B artifact {artifact.name}: {png.relative_to(folder)} is "
                        f"not <prompt_set>/<seed>.png; ignored."
                    )
                    continue
                images[checkpoint_id].append((png.parent.name, int(png.stem), png))
        unknown = sorted({name for rows in images.values() for name, _, _ in rows} - set(prompts))
        problems += [
            f"{self.where}: prompt set {name} is not in config sampling.prompts; its "
            f"prompt and expected labels are unknown."
            for name in unknown
        ]
        return [
            SampleRow(
                branch=branch.name,
                index=checkpoint.index,
                label=checkpoint.label,
                checkpoint_id=checkpoint.checkpoint_id,
                prompt_set=prompt_set,
                prompt=str(prompts.get(prompt_set, {}).get("prompt", "")),
                activation=bool(prompts.get(prompt_set, {}).get("activation", False)),
                seed=seed,
                image=png,
                expect=dict(prompts.get(prompt_set, {}).get("expect") or {}),
            )
            for branch in branches.values()
            for checkpoint in branch.plan
            for prompt_set, seed, png in images.get(checkpoint.checkpoint_id, [])
        ]


def nested(config: dict) -> dict:
    """A W&B config with flattened `a.b.c` keys (as burnlab logs it, for TensorBoard's hparams)
    as nested dicts; keys without dots pass through."""
    tree: dict = {}
    for key, value in config.items():
        *parents, leaf = key.split(".")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return tree


def history_losses(
    history: Iterable[dict], stages: list[str], where: str, branch_stages: list[str] | None = None
) -> dict[str, list[LossRow]]:
    """Loss rows from W&B history rows. A branch run (`branch_stages` given) logs a metrics.jsonl
    row as `loss/train` (a train row) or `loss/val`, `loss/stabilized` (a validation row) beside
    `study_epoch` and `stage/index`; an older run logged `<stage>/<key>` beside `study_epoch`."""
    losses: dict[str, list[LossRow]] = defaultdict(list)
    for row in history:
        if branch_stages and "stage/index" in row:
            values = {key: row.get(KEYS[key]) for key in LOSS_FIELDS}
            if all(value is None for value in values.values()):
                continue
            at = f"{where}: history row {row.get('_step', '?')}"
            stage = branch_stages[int(row["stage/index"])]
            epoch = require(row, "study_epoch", at, "the epoch on the branch's axis, logged with every row")
            kind = "train" if values["train_loss"] is not None else "val"
            losses[stage].append(LossRow(kind=kind, stage=stage, study_epoch=float(epoch), **values))
            continue
        for stage in stages:
            values = {key: row.get(f"{stage}/{key}") for key in LOSS_FIELDS}
            if all(value is None for value in values.values()):
                continue
            epoch = require(
                row,
                "study_epoch",
                f"{where}: history row {row.get('_step', '?')}",
                "the epoch on the branch's axis, logged with every row",
            )
            kind = "train" if values["train_loss"] is not None else "val"
            losses[stage].append(LossRow(kind=kind, stage=stage, study_epoch=float(epoch), **values))
    return dict(losses)
