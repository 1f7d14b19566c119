"""The analysis's own model of a run: what every product (grids, GIFs, loss overlay, metrics,
symptom profile, report) reads, whichever source (local run folder or W&B) it came from.

    from burnlab.analysis.sources import open_run
    run = open_run("runs/burn_unet")          # -> Run
    for branch in run.branches.values(): print(branch.name, [c.label for c in branch.plan])

The shapes mirror docs/run_store.md (study.json, metrics.jsonl, samples.jsonl); a source maps its
files or API objects into these and records what it could not find in `Run.problems`, so that
the report can say what is missing and still build the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# study.json's records: the types its writer (the runner) uses too
from burnlab.store.layout import PlanEntry as Checkpoint
from burnlab.store.layout import StageRecord as Stage


class AnalysisError(Exception):
    """Bad input the user can fix: the CLI prints the message (one paragraph naming the path or
    key, the value found and what is expected) and exits with status 2, without a traceback."""


@dataclass(frozen=True)
class Branch:
    """The path from the base to a leaf stage; `component` is what the leaf stage trains."""

    name: str
    component: tuple[str, ...]
    stages: tuple[str, ...]
    plan: tuple[Checkpoint, ...]


@dataclass(frozen=True)
class LossRow:
    """One metrics.jsonl row: `kind` is "train" or "val"; absent losses are None."""

    kind: str
    stage: str
    study_epoch: float
    train_loss: float | None = None
    val_loss: float | None = None
    stabilized_loss: float | None = None


@dataclass(frozen=True)
class SampleRow:
    """One sampled image of the testing plan; `image` is the local file holding its PNG."""

    branch: str
    index: int
    label: str
    checkpoint_id: str
    prompt_set: str
    prompt: str
    activation: bool
    seed: int
    image: Path
    expect: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LongCaptions:
    """Training captions (and validation ones) longer than the tokenizer's limit, which training
    cut there: `count` of them, `limit` in tokens (BOS and EOS included), and up to ten
    `examples` as (the caption's file in its data folder, the words cut)."""

    count: int
    limit: int
    examples: tuple[tuple[str, str], ...]

    def note(self) -> str:
        """One sentence for the report: how many, the limit, and the first example."""
        captions = "1 caption is" if self.count == 1 else f"{self.count} captions are"
        text = f"{captions} longer than the tokenizer's {self.limit} tokens; words past the limit are not trained"
        if not self.examples:
            return text + "."
        file, cut = self.examples[0]
        return f"{text}, e.g. '{file}': '... {cut}'."


@dataclass
class Run:
    """Everything the analysis knows about one run.

    `name` identifies the run in the report; `location` says where it was read from;
    `losses` maps a stage name to its rows; `config` is the resolved config (a nested dict);
    `problems` lists, in plain words, what was missing or unreadable; `long_captions` is None
    when the run store does not say (written before burnlab recorded it)."""

    name: str
    location: str
    stages: dict[str, Stage]
    branches: dict[str, Branch]
    losses: dict[str, list[LossRow]]
    samples: list[SampleRow]
    config: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    local_dir: Path | None = None
    long_captions: LongCaptions | None = None

    def samples_in(self, branch: str, prompt_set: str) -> list[SampleRow]:
        """The samples of every checkpoint of a branch for one prompt set."""
        return [row for row in self.samples if row.branch == branch and row.prompt_set == prompt_set]

    def samples_of(self, branch: str, prompt_set: str, index: int) -> list[SampleRow]:
        """The samples of one checkpoint of a branch for one prompt set, in seed order."""
        rows = [row for row in self.samples_in(branch, prompt_set) if row.index == index]
        return sorted(rows, key=lambda row: row.seed)

    def prompt_sets(self) -> list[str]:
        """Prompt sets in the order they first appear in the sample index."""
        return list(dict.fromkeys(row.prompt_set for row in self.samples))

    def branch_losses(self, branch: str) -> list[LossRow]:
        """The loss rows of every stage on a branch, in stage order."""
        return [row for stage in self.branches[branch].stages for row in self.losses.get(stage, [])]


@dataclass(frozen=True)
class BranchRef:
    """A branch of a particular run: the unit the report compares (UNet burn vs TE burn)."""

    run: Run
    branch: Branch

    @property
    def title(self) -> str:
        return f"{self.run.name}/{self.branch.name}"

    @property
    def trains_text_encoder_only(self) -> bool:
        return tuple(self.branch.component) == ("text_encoder",)
