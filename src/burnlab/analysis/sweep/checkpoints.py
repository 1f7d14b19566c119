"""Which checkpoint of each job a sweep report shows (`burnlab-analyze SWEEP --checkpoints ...`).

    choices = parse_choices(["final", "650", "unet_hi e100"])
    choices = default_choices(plans)      # where the jobs start to differ, and the final one
    checkpoint = choices[0].pick(plan)    # that job's Checkpoint, or None when it has none

A choice is `final` (each job's last checkpoint), a study epoch (a number: the checkpoint at that
epoch on the branch's axis, e.g. 650 = unet_hi e100 after a 50-epoch baseline and 500 epochs
of unet_lo) or a testing-plan label, with or without its index ("5 unet_hi e100", "unet_hi
e100"). By default a report shows the first checkpoint at which the jobs' weights differ (where the
swept setting starts to act: a lr sweep of unet_hi shares base, baseline and unet_lo; an epoch
sweep's jobs share every checkpoint up to the shorter length, so only the final ones differ) and
the final one.
"""

from __future__ import annotations

from dataclasses import dataclass

from burnlab.analysis.run import AnalysisError, Checkpoint

FINAL = "final"
EPOCH, LABEL, INDEX = "epoch", "label", "index"


@dataclass(frozen=True)
class Choice:
    """`text` names the choice in the report and in file names; `kind` says how it picks."""

    text: str
    kind: str
    index: int = -1  # kind INDEX: the position in the testing plan

    def pick(self, plan: tuple[Checkpoint, ...]) -> Checkpoint | None:
        if self.kind == FINAL:
            return plan[-1] if plan else None
        if self.kind == INDEX:
            return plan[self.index] if self.index < len(plan) else None
        return next((checkpoint for checkpoint in plan if self.names(checkpoint)), None)

    def names(self, checkpoint: Checkpoint) -> bool:
        if self.kind == EPOCH:
            return checkpoint.study_epoch == float(self.text)
        return self.text in (checkpoint.label, checkpoint.label.split(" ", 1)[-1])


def parse_choices(texts: list[str] | tuple[str, ...]) -> list[Choice]:
    """`--checkpoints` values as choices, in the order given, each once."""
    choices = []
    for text in dict.fromkeys(text.strip() for text in texts):
        if not text:
            raise AnalysisError(
                f"--checkpoints {','.join(texts)!r} has an empty entry; expected "
                f"comma-separated choices: '{FINAL}', a study epoch (e.g. 650) or a "
                f"testing-plan label (e.g. 'unet_hi e100')."
            )
        choices.append(Choice(text, FINAL if text == FINAL else EPOCH if is_number(text) else LABEL))
    return choices


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_choices(choices: list[Choice], plans: list[tuple[Checkpoint, ...]]) -> None:
    """Every choice must name a checkpoint of at least one job's plan."""
    for choice in choices:
        if not any(choice.pick(plan) for plan in plans):
            known = ", ".join(f"'{c.label}' (epoch {c.study_epoch:g})" for c in plans[0])
            raise AnalysisError(
                f"--checkpoints {choice.text!r} names no checkpoint of the jobs' "
                f"testing plans; expected '{FINAL}', a study epoch or a label, of "
                f"the first job: {known}."
            )


def default_choices(plans: list[tuple[Checkpoint, ...]]) -> list[Choice]:
    """The first checkpoint where the jobs' weights differ (if not the last), and the final."""
    longest = max(len(plan) for plan in plans)
    differs = next(
        (index for index in range(longest) if len({plan[index].weights_id for plan in plans if index < len(plan)}) > 1),
        None,
    )
    if differs is None or all(differs == len(plan) - 1 for plan in plans):
        return [Choice(FINAL, FINAL)]
    first = next(plan[differs] for plan in plans if differs < len(plan))
    return [Choice(first.label, INDEX, differs), Choice(FINAL, FINAL)]
