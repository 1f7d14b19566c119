"""The toy SDXL study's tables in experiments/README.md, read from a run's analysis:

    .venv/bin/python bench/study_tables.py runs/followfox_xl

per branch the probe's style (95% bootstrap interval over the seeds) and adherence at each
checkpoint (analysis/metrics.json), then every swap pair's verdict and shares (analysis/attribution.json).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PROMPT_SETS = ("person", "circles", "sunglasses")
BRANCHES = {
    "unet_hi": "UNet burn",
    "te_hi": "first text encoder burn",
    "te2_hi": "second text encoder burn",
    "tes_hi": "both text encoders",
}


def number(value: float) -> str:
    return f"{value:.3g}"


def interval(share: dict) -> str:
    return f"{share['value']:.2f} [{share['low']:.2f}, {share['high']:.2f}]"


def probe_tables(rows: list) -> list[str]:
    lines = []
    for branch, title in BRANCHES.items():
        mine = [row for row in rows if row["branch"] == branch]
        lines += [
            "",
            f"**{title}** (`{branch}`):",
            "",
            "| checkpoint | style: person (no phrase) | style: circles (no phrase) | style: sunglasses + phrase "
            "| adherence person / circles / sunglasses |",
            "|---|---:|---:|---:|---:|",
        ]
        for index in sorted({row["index"] for row in mine}):
            at = {row["prompt_set"]: row for row in mine if row["index"] == index}
            style = [
                f"{number(at[p]['probe_style'])} [{number(at[p]['interval']['probe_style'][0])}, "
                f"{number(at[p]['interval']['probe_style'][1])}]"
                for p in PROMPT_SETS
            ]
            adherence = " / ".join(number(at[p]["adherence"]) for p in PROMPT_SETS)
            lines.append(f"| {at['person']['label']} | " + " | ".join(style) + f" | {adherence} |")
    return lines


def swap_table(pairs: list) -> list[str]:
    lines = [
        "",
        "| branch | tuned | against | verdict | UNet share | TE1 share | TE2 share | interaction |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for pair in pairs:
        shares = pair["shares"]
        lines.append(
            f"| {pair['branch']} | {pair['tuned']} | {pair['reference']} | {pair['verdict']} | "
            f"{interval(shares['unet'])} | {interval(shares['text_encoder'])} | "
            f"{interval(shares['text_encoder_2'])} | {shares['interaction']['value']:+.2f} |"
        )
    return lines


def main(argv=None) -> int:
    run = Path((argv or sys.argv[1:] or ["runs/followfox_xl"])[0])
    try:
        rows = json.loads((run / "analysis" / "metrics.json").read_text())["rows"]
        document = json.loads((run / "analysis" / "attribution.json").read_text())
    except (OSError, ValueError, KeyError) as error:
        print(
            f"study_tables: {run}/analysis is not an analysed toy SDXL study ({error}); run make followfox-xl",
            file=sys.stderr,
        )
        return 2
    pairs = document["pairs"] if isinstance(document, dict) else document
    print("\n".join(probe_tables(rows) + swap_table(pairs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
