"""The static HTML report (report.html) over the products of burnlab/analysis/products.py, and summary.md
(swap verdicts, symptom profiles, loss statistics and metric table in Markdown).

    burnlab-analyze runs/burn_unet --compare runs/burn_te --out runs/report
    # then open runs/report/report.html: every link is relative, so the folder can be moved

Sections: captions the tokenizer cut, what is missing, which component burned (the component
swap's verdicts), the symptom profile (what moved and when; it blames nothing), loss overlay and loss
statistics, UNet vs TE side by side, per prompt set the comparison grids / progression GIFs /
3x3 grids, metric plots and the metric table.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from urllib.parse import quote

from burnlab.analysis.attribution import GROUPS, Attribution, short_labels, shown
from burnlab.analysis.loss_stats import SLOPE_EPOCHS
from burnlab.analysis.measure import METRICS
from burnlab.analysis.results import BaseProducts, Products
from burnlab.analysis.run import LongCaptions
from burnlab.analysis.symptoms import SYMPTOM_NAMES, Z_CAP, Z_MIN, Profile

STRONGEST_SIGNALS = 10  # signals listed per branch in the report (all are in symptoms.json)
NO_SWAP = "no swap corners were sampled (no attribution.json in the run), so no component is named"
PROFILE_NOTE = (
    f"What moved and when. A signal is a metric's move from the baseline, in the direction of "
    f"a symptom of the study, of at least {Z_MIN:g} bootstrap standard errors; each (prompt set, "
    f"checkpoint after the baseline) cell of a symptom scores its strongest z, capped at {Z_CAP:g}, "
    f"and 0 without a signal. A symptom's number is the mean over its cells (per checkpoint: over its "
    f"prompt sets there), so it does not grow with more checkpoints or prompt sets; - : not measured."
)
SWAP_BLAMES = "It blames no component: the component swap (the section above) names the one that burned."

STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
img { max-width: 100%; image-rendering: pixelated; border: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 12px; }
td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
th { background: #f0f0f0; } td.text { text-align: left; }
.problems { background: #fff4e5; border-left: 4px solid #f0a030; padding: 0.5em 1em; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
figure { margin: 0; } figcaption { font-size: 12px; color: #555; }
"""
# Loss statistics columns: heading, StageLossStats field, what it is
LOSS_COLUMNS = (
    ("val passes", "val_passes", "validation passes logged in the stage"),
    ("val slope", "val_slope", f"least-squares slope of the validation loss per {SLOPE_EPOCHS} epochs"),
    ("val change", "val_change", "validation loss at the stage's last pass minus its first"),
    ("stabilized slope", "stabilized_slope", f"least-squares slope of the stabilized loss per {SLOPE_EPOCHS} epochs"),
    ("stabilized change", "stabilized_change", "stabilized loss at the stage's last pass minus its first"),
    ("train roughness", "train_roughness", "std of the step-to-step differences of the training loss"),
    (
        "roughness / previous stage",
        "roughness_vs_previous",
        "train roughness over the previous stage's on the branch (hi over lo)",
    ),
)


def write_summary(products: Products) -> Path:
    """summary.md for a README: the component swap's verdicts of the pairs the report shows, then
    the symptom profiles, loss statistics and the metric table (after a note on captions the
    tokenizer cut, if any)."""
    metrics = measured_metrics(products)
    lines = summary_captions(products)
    lines += ["## Which component burned (component swap)", ""]
    lines += [f"- {line}" for line in swap_lines(products)] or [f"- {NO_SWAP[0].upper()}{NO_SWAP[1:]}."]
    lines += ["", "## Symptom profile", "", f"{PROFILE_NOTE} {SWAP_BLAMES}", ""]
    for found in products.profiles:
        lines += [f"- {found.summary()}", ""] + profile_markdown(found) + [""]
    lines += [
        f"## Loss statistics (slopes per {SLOPE_EPOCHS} epochs)",
        "",
        "| branch | stage | trains | " + " | ".join(head for head, _, _ in LOSS_COLUMNS) + " |",
        "|---|---|---|" + "---:|" * len(LOSS_COLUMNS),
    ]
    lines += [
        f"| {stats.branch} | {stats.stage} | {stats.trains} | "
        + " | ".join(number(getattr(stats, field)) for _, field, _ in LOSS_COLUMNS)
        + " |"
        for stats in products.loss_statistics
    ]
    lines += [
        "",
        f"## Metrics (feature space: {products.table.feature_space})",
        "",
        "Each value with its 95% bootstrap interval over the checkpoint's images.",
        "",
        "| branch | checkpoint | prompt set | " + " | ".join(metrics) + " |",
        "|---|---|---|" + "---:|" * len(metrics),
    ]
    lines += [
        f"| {row['run']}/{row['branch']} | {row['label']} | {row['prompt_set']} | "
        + " | ".join(with_interval(row, metric) for metric in metrics)
        + " |"
        for row in products.table.rows
    ]
    path = products.out / "summary.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def swap_lines(products: BaseProducts) -> list[str]:
    """The swap verdict of each pair the report shows, a sentence each."""
    return [
        f"{pair.run}/{pair.branch}, '{pair.tuned}' against '{pair.reference}': {pair.verdict}. {pair.sentence}"
        for pair in shown(products.attributions)
    ]


def headlines(products: BaseProducts) -> list[str]:
    """What burnlab-analyze and a finished study print: the swap verdicts, then the profiles."""
    return swap_lines(products) + [found.summary() for found in products.profiles]


def final_against_baseline(attributions: list[Attribution], run: str, branch: str) -> Attribution | None:
    """A branch's last checkpoint against its baseline: the last of its pairs whose reference is that
    of its first pair (the study samples the baseline's pairs first), None without pairs."""
    pairs = [pair for pair in attributions if (pair.run, pair.branch) == (run, branch)]
    return [pair for pair in pairs if pair.reference == pairs[0].reference][-1] if pairs else None


def profile_number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def profile_markdown(found: Profile) -> list[str]:
    """A row for the whole branch, then one per checkpoint after the baseline; a column per symptom."""
    rows = [("all checkpoints", found.symptoms), *found.by_checkpoint.items()]
    return ["| checkpoint | " + " | ".join(SYMPTOM_NAMES) + " |", "|---|" + "---:|" * len(SYMPTOM_NAMES)] + [
        f"| {label} | " + " | ".join(profile_number(values[name]) for name in SYMPTOM_NAMES) + " |"
        for label, values in rows
    ]


def summary_captions(products: Products) -> list[str]:
    """summary.md's first section, when a tokenizer cut some captions: they bear on every verdict."""
    notes = cut_captions(products)
    if not notes:
        return []
    return ["## Captions", ""] + [f"- {name}: {record.note()}" for name, record in notes] + [""]


def measured_metrics(products: Products) -> list[str]:
    """The metrics with a value somewhere (plotted), in METRICS order."""
    return [metric for metric in METRICS if metric in products.metric_plots]


def write_report(products: Products) -> Path:
    return write_page(
        products.out / "report.html",
        "burnlab report",
        [
            header(products),
            long_captions(products),
            missing(products.problems + products.table.notes),
            attribution_section(products),
            symptom_section(products),
            losses(products),
            side_by_side(products),
            samples(products),
            metric_section(products),
        ],
    )


def write_page(path: Path, title: str, sections: list[str]) -> Path:
    """A static HTML page of the non-empty sections, in the report's style."""
    path.write_text(
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>\n"
        + "\n".join(section for section in sections if section)
        + "\n</body></html>\n",
        encoding="utf-8",
    )
    return path


def link(out: Path, path: Path) -> str:
    """A relative, URL-quoted link from a report in `out` to a product."""
    return quote(path.relative_to(out).as_posix())


def image(out: Path, path: Path, caption: str) -> str:
    return (
        f"<figure><img src='{link(out, path)}' alt='{escape(caption)}'>"
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def header(products: Products) -> str:
    runs = dict.fromkeys((ref.run.name, ref.run.location) for ref in products.refs)
    items = "".join(f"<li><b>{escape(name)}</b>: {escape(location)}</li>" for name, location in runs)
    logged = products.logged_to or "not logged to W&B (no active run, no --wandb-project)"
    return (
        f"<h1>burnlab report</h1><ul>{items}</ul><p>Feature space: "
        f"{escape(products.table.feature_space)}. Results: <a href='metrics.json'>metrics.json"
        f"</a>, <a href='symptoms.json'>symptoms.json</a>, <a href='summary.md'>summary.md</a>; "
        f"{escape(logged)}.</p>"
    )


def cut_captions(products: Products) -> list[tuple[str, LongCaptions]]:
    """(run name, its long captions) for each run whose tokenizer cut some of its captions."""
    records = {ref.run.name: ref.run.long_captions for ref in products.refs}
    return [(name, record) for name, record in records.items() if record and record.count]


def long_captions(products: Products) -> str:
    items = "".join(
        f"<li>{escape(name)}: {escape(record.note())}{caption_examples(record)}</li>"
        for name, record in cut_captions(products)
    )
    return f"<div class='problems'><h2>Long captions</h2><ul>{items}</ul></div>" if items else ""


def caption_examples(record: LongCaptions) -> str:
    """Every recorded example, when there is more than the note's one."""
    if len(record.examples) < 2:
        return ""
    items = "".join(f"<li>{escape(file)}: {escape(cut)}</li>" for file, cut in record.examples)
    return (
        f"<details><summary>{len(record.examples)} of {record.count} with the words cut"
        f"</summary><ul>{items}</ul></details>"
    )


def missing(lines: list[str]) -> str:
    """What could not be read or measured, in a highlighted box; nothing when all is there."""
    if not lines:
        return ""
    items = "".join(f"<li>{escape(line)}</li>" for line in lines)
    return f"<div class='problems'><h2>Missing or not measured</h2><ul>{items}</ul></div>"


def attribution_section(products) -> str:
    """Which component burned: the swap verdicts, their grids, every pair's numbers, the drift."""
    if not products.attributions:
        return ""
    found = products.attributions
    parts = [
        "<h2>Which component burned (component swap)</h2><p>For a reference R and a tuned checkpoint M, "
        "the same prompts and seeds are sampled with M's UNet beside R's text encoder and the other way "
        "round (SDXL: every mix of the three components, eight corners). Distances are per image, from "
        "R's image of the same seed, in units of the distance "
        "between two seeds of R (the feature space below); a component's share is its Shapley share of "
        "M's distance; the verdict holds each share's 95% interval against the threshold "
        f"{found[0].threshold:.2f} (<code>make verdicts</code>). Feature space: "
        f"{escape(found[0].feature_space)}; all pairs in attribution.json. Against the base model the "
        "move includes the baseline's own fine-tune (the intended change, mostly the UNet's), so there a "
        "share over the threshold says that component moved, not that it burned: the pair against the "
        "baseline says which one burned.</p>"
    ]
    for pair in shown(found):
        number = found.index(pair)
        grids = "".join(
            image(
                products.out,
                path,
                f"{prompt_set}: one row per swap corner, R first and M last; in brackets the row's distance from R",
            )
            for (index, prompt_set), path in products.swap_grids.items()
            if index == number
        )
        parts.append(
            f"<h3>{escape(pair.run)}/{escape(pair.branch)}: {escape(pair.tuned)} against "
            f"{escape(pair.reference)} &rarr; <b>{escape(pair.verdict)}</b></h3>"
            f"<p>{escape(pair.sentence)}</p>{grids}"
        )
    components = tuple(found[0].components) if found else ()
    labels = short_labels(components)
    encoders = [c for c in components if c != "unet"]
    drift_keys = [*encoders, *(["pooled"] if "text_encoder_2" in encoders else [])]
    drift_labels = {**labels, "pooled": "TE2 pooled"}
    head = "".join(
        f"<th>{escape(title)}</th>"
        for title in (
            "run/branch",
            "tuned",
            "reference",
            "verdict",
            *[f"{labels[c]} share" for c in components],
            "interaction",
            *[f"d(M), {group}" for group in GROUPS],
            *[f"{drift_labels[key]} drift (study / unrelated / empty)" for key in drift_keys],
            "UNet drift by t",
            "weights " + " / ".join(labels[c] for c in components),
        )
    )
    rows = []
    for pair in found:
        drift = pair.drift
        unet = drift.get("unet", {})
        weights = drift.get("weights", {})
        cells = [
            f"{pair.run}/{pair.branch}",
            pair.tuned,
            pair.reference,
            pair.verdict,
            *[pair.shares[c].text() if c in pair.shares else "-" for c in components],
            f"{pair.shares['interaction'].value:+.2f}",
            *[pair.distances[group]["M"].text() if group in pair.distances else "-" for group in GROUPS],
            *[" / ".join(f"{value:.3f}" for value in drift.get(key, {}).values()) for key in drift_keys],
            ", ".join(f"{key} {value:.3f}" for key, value in unet.items()),
            " / ".join(f"{weights[c]['total']:.4f}" for c in components if c in weights),
        ]
        rows.append("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in cells) + "</tr>")
    parts.append(
        f"<h3>Every pair</h3><table><tr>{head}</tr>{''.join(rows)}</table>"
        "<p>Drift (no sampling; ratios ||M - R|| / ||R||): the text encoder's output states on the "
        "study's prompts, unrelated prompts and the empty prompt; the UNet's noise prediction on fixed "
        "inputs per timestep range; the weights of each component (per block in attribution.json).</p>"
    )
    return "".join(parts)


def write_diagnosis(out: Path, pair, grids: dict, problems: list[str], described: dict[str, str]) -> Path:
    """burnlab-diagnose's page: the verdict, its sentence, the numbers, a swap grid per prompt set."""
    from burnlab.store.layout import swap_corners

    corners = tuple(swap_corners(tuple(pair.components)))
    head = "".join(f"<th>{escape(t)}</th>" for t in ("prompts", *corners))
    rows = "".join(
        f"<tr><td>{escape(group)}</td>"
        + "".join(f"<td>{escape(pair.distances[group][corner].text())}</td>" for corner in corners)
        + "</tr>"
        for group in GROUPS
        if group in pair.distances
    )
    shares = "".join(f"<li>{escape(name)}: {escape(value.text())}</li>" for name, value in pair.shares.items())
    drift = escape(json.dumps({k: v for k, v in pair.drift.items() if k != "weights"}, indent=1))
    weights = "".join(f"<li>{escape(c)}: {w['total']:.4f}</li>" for c, w in pair.drift.get("weights", {}).items())
    grid_html = "".join(
        image(
            out,
            path,
            f"{prompt_set}: one row per swap corner, R first and M last (distance from R in seed spreads)",
        )
        for prompt_set, path in grids.items()
    )
    return write_page(
        out / "report.html",
        "burnlab-diagnose",
        [
            f"<h1>burnlab-diagnose: <b>{escape(pair.verdict)}</b></h1><p>{escape(pair.sentence)}</p>"
            f"<ul><li>R = {escape(pair.reference)}: {escape(described['reference'])}</li>"
            f"<li>M = {escape(pair.tuned)}: {escape(described['tuned'])}</li></ul>",
            missing(problems),
            f"<h2>How far each corner moved from R</h2><p>Per image, from R's image of the same seed, in units of "
            f"the distance between two seeds of R ({escape(pair.feature_space)}; {pair.seeds} seeds; 95% paired "
            f"bootstrap intervals). Without the phrase: collateral damage; with it: the intended change.</p>"
            f"<table><tr>{head}</tr>{rows}</table><h3>Shares (Shapley split of d(M))</h3><ul>{shares}</ul>"
            f"<p>Threshold {pair.threshold:.2f}: {escape(json.dumps(pair.statuses))}.</p>",
            f"<h2>Swap grids</h2>{grid_html}",
            f"<h2>Drift (no sampling)</h2><p>Weights, relative distance: <ul>{weights}</ul></p><pre>{drift}</pre>"
            "<p>Text encoder: relative change of its output states per prompt group; UNet: relative change of "
            "its noise prediction on fixed inputs per timestep range. Per-block weight drift: "
            "analysis/attribution.json.</p>",
        ],
    )


def symptom_section(products: Products) -> str:
    """What moved and when, per branch: the profile over all checkpoints and per checkpoint, and the
    strongest signals; it blames nothing, the section above does."""
    parts = []
    for found in products.profiles:
        head = "".join(f"<th>{escape(name)}</th>" for name in SYMPTOM_NAMES)
        rows = "".join(
            f"<tr><td class='text'>{escape(label)}</td>"
            + "".join(f"<td>{profile_number(values[name])}</td>" for name in SYMPTOM_NAMES)
            + "</tr>"
            for label, values in [("all checkpoints", found.symptoms), *found.by_checkpoint.items()]
        )
        strongest = found.strongest(STRONGEST_SIGNALS)
        signals = "".join(f"<li>{escape(signal.describe())}</li>" for signal in strongest)
        more = len(found.signals) - len(strongest)
        signals += f"<li>... and {more} more signals in symptoms.json</li>" if more > 0 else ""
        parts.append(
            f"<h3>{escape(found.run)}/{escape(found.branch)}</h3><p>{escape(found.summary())}</p>"
            f"<table class='profile'><tr><th>checkpoint</th>{head}</tr>{rows}</table>"
            + (f"<p>Strongest signals:</p><ul>{signals}</ul>" if signals else "")
        )
    blame = (
        SWAP_BLAMES
        if products.attributions
        else (f"It blames no component: the component swap names the one that burned, but {NO_SWAP}.")
    )
    return (
        f"<h2>Symptom profile</h2><p>{escape(PROFILE_NOTE)} {escape(blame)} Every signal: "
        f"<a href='symptoms.json'>symptoms.json</a>.</p>" + "".join(parts)
    )


def losses(products: Products) -> str:
    relative = any(line.stage for line in products.loss_series)
    caption = (
        "train (raw + EMA), validation and stabilized loss"
        + (" (minus their stage's first pass, as EveryDream2 logs them)" if relative else "")
        + "; dashed lines: stage ends"
    )
    head = "".join(f"<th title='{escape(what)}'>{escape(heading)}</th>" for heading, _, what in LOSS_COLUMNS)
    rows = "".join(
        f"<tr><td class='text'>{escape(stats.branch)}</td><td class='text'>{escape(stats.stage)}</td>"
        f"<td class='text'>{escape(stats.trains)}</td>"
        + "".join(f"<td>{number(getattr(stats, field))}</td>" for _, field, _ in LOSS_COLUMNS)
        + "</tr>"
        for stats in products.loss_statistics
    )
    return (
        "<h2>Losses</h2>"
        + image(products.out, products.losses_png, caption)
        + f"<h3>Loss statistics</h3><p>Per stage (<a href='loss_stats.json'>loss_stats.json</a>): "
        f"slopes are least-squares, per {SLOPE_EPOCHS} epochs; changes are last pass minus "
        f"first; roughness is the std of the training loss's step-to-step differences.</p>"
        f"<table><tr><th>branch</th><th>stage</th><th>trains</th>{head}</tr>{rows}</table>"
    )


def side_by_side(products: Products) -> str:
    if not products.side_by_side_pair:
        return ""
    left, right = products.side_by_side_pair
    figures = "".join(image(products.out, path, prompt_set) for prompt_set, path in products.side_by_side.items())
    return f"<h2>{escape(left.title)} vs {escape(right.title)}</h2><div class='figures'>{figures}</div>"


def samples(products: Products) -> str:
    parts = []
    prompt_sets = dict.fromkeys(prompt_set for _, prompt_set in products.per_branch)
    for prompt_set in prompt_sets:
        parts.append(f"<h2>Prompt set: {escape(prompt_set)}</h2>")
        for ref in products.refs:
            made = products.per_branch.get((ref.title, prompt_set))
            if made is None:
                continue
            grids = "".join(image(products.out, path, label) for label, path in made.checkpoint_grids)
            parts.append(
                f"<h3>{escape(ref.title)} (trains {escape('+'.join(ref.branch.component))})</h3>"
                f"<div class='figures'>{image(products.out, made.grid, 'rows = checkpoints, columns = seeds')}"
                f"{image(products.out, made.gif, 'progression')}</div>"
                f"<details><summary>3x3 grid per checkpoint</summary>"
                f"<div class='figures'>{grids}</div></details>"
            )
    return "\n".join(parts)


def metric_section(products: Products) -> str:
    plots = "".join(
        image(products.out, path, f"{metric}: {METRICS[metric]}") for metric, path in products.metric_plots.items()
    )
    shown = measured_metrics(products)
    head = "".join(f"<th title='{escape(METRICS[m])}'>{escape(m)}</th>" for m in shown)
    rows = "".join(
        f"<tr><td class='text'>{escape(row['run'])}/{escape(row['branch'])}</td>"
        f"<td class='text'>{escape(row['label'])}</td><td class='text'>{escape(row['prompt_set'])}</td>"
        f"<td>{row['n_images']}</td>" + "".join(f"<td>{with_interval(row, m)}</td>" for m in shown) + "</tr>"
        for row in products.table.rows
    )
    return (
        f"<h2>Metrics</h2><div class='figures'>{plots}</div>"
        f"<table><tr><th>branch</th><th>checkpoint</th><th>prompt set</th><th>N</th>{head}</tr>"
        f"{rows}</table>"
    )


def number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def with_interval(row: dict, metric: str) -> str:
    """The value with its 95% bootstrap interval over the checkpoint's images."""
    interval = row.get("interval", {}).get(metric)
    if row[metric] is None or interval is None:
        return number(row[metric])
    return f"{number(row[metric])} [{number(interval[0])}, {number(interval[1])}]"
