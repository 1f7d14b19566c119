"""burnlab-diagnose: which component of a fine-tune burned, for a model burnlab did not train.

    burnlab-diagnose TUNED [--base REF] [--out DIR] [--activation PHRASE] [--prompts-file F] [--seeds N]

TUNED and REF are each a burnlab checkpoint folder, a diffusers pipeline folder, a hub id in the
local Hugging Face cache, a single-file SD 1.x or SDXL checkpoint (.safetensors with A1111/LDM or
SGM keys; .ckpt only with --allow-pickle) or, for TUNED, a LoRA file (diffusers or kohya keys) on top of REF
(burnlab.models.loading); both SD or both SDXL. REF defaults to the embedded toy world's base model.
The swap corners (each component from REF or TUNED: SD's four, SDXL's eight with its second text
encoder) are sampled with the same prompts and seeds (the study's three prompt sets by default), the
drift instruments measured
(burnlab.attribution.swap, burnlab.attribution.drift), and the analysis turns them into numbers and a verdict
(burnlab/analysis/attribution.py). Writes into --out: attribution.json (the corners and instruments),
analysis/attribution.json (the numbers), report.html (per prompt set a swap grid, the numbers,
the verdict's sentence), samples/ (the corners' images, reused by a second run); prints the
verdict. Bad input is one paragraph (exit status 2).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from burnlab.errors import UserError
from burnlab.store.files import atomic_write_json, hash_json

log = logging.getLogger("burnlab")
# the sampling group of the shipped configs a diagnosis uses: the toy world's, else the study's
# prompt sets at the family's native size (SD 1.5's 512 px, SDXL's 1024 px)
TOY_PROMPTS, STUDY_PROMPTS, STUDY_XL_PROMPTS = "toy", "study", "study_xl"


def sampling_config(toy: bool, args, xl: bool = False):
    """The sampling group the study would use (the toy world's, SD 1.5's or SDXL's), with the
    options applied."""
    from burnlab.config.compose import compose_config
    from burnlab.config.schema import SamplingConfig

    group = TOY_PROMPTS if toy else STUDY_XL_PROMPTS if xl else STUDY_PROMPTS
    # as plain values: the prompt sets below are replaced, which the composed (typed) node refuses
    raw = OmegaConf.create(OmegaConf.to_container(compose_config([f"sampling={group}"]).sampling))
    raw.testing_plan = False
    if args.prompts_file:
        raw.prompts = prompts_from_file(Path(args.prompts_file), args.activation)
    elif args.activation:
        for prompt in raw.prompts.values():
            if prompt.activation:
                prompt.prompt = f"{prompt.prompt.split(',')[0]}, {args.activation}"
    for key, value in (
        ("images_per_prompt", args.seeds),
        ("steps", args.steps),
        ("guidance_scale", args.guidance),
        ("width", args.resolution),
        ("height", args.resolution),
    ):
        if value is not None:
            raw[key] = value
    if not toy:
        for prompt in raw.prompts.values():
            prompt.expect = {}
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SamplingConfig), raw))
    except Exception as error:  # a schema check's message names the key (burnlab.config.schema._require)
        raise UserError(f"burnlab-diagnose: bad sampling options ({error}).") from None


def prompts_from_file(path: Path, activation: str | None) -> dict:
    """Prompt sets from a YAML mapping (name -> {prompt, activation}, as conf/sampling/) or a
    text file (a prompt a line; a line holding --activation's phrase is an activation prompt)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(
            f"--prompts-file {path}: cannot be read ({error}); expected a UTF-8 text file with a "
            f"prompt a line, or a YAML mapping of prompt sets."
        ) from None
    if path.suffix in (".yaml", ".yml"):
        loaded = OmegaConf.create(text)
        if not isinstance(loaded, type(OmegaConf.create({}))) or not loaded:
            raise UserError(f"--prompts-file {path}: expected a mapping name -> {{prompt, activation}}.")
        return loaded
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise UserError(f"--prompts-file {path}: holds no prompt; expected a prompt a line.")
    return {
        f"prompt_{i + 1}": {"prompt": line, "activation": bool(activation and activation in line)}
        for i, line in enumerate(lines)
    }


def share_unchanged(reference, tuned) -> None:
    """Where a component of TUNED has REF's weights exactly (the frozen side of a one-component
    fine-tune, a LoRA without that component's adapter), use REF's module: its swap corner is
    then REF itself, sampled once."""
    for name, module in reference.components.items():
        ours, theirs = module.state_dict(), tuned.components[name].state_dict()
        if ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours):
            tuned.components[name] = module


def diagnose(args) -> int:
    from accelerate import Accelerator

    from burnlab import analysis
    from burnlab.analysis.attribution import AttributionRule, attribute_run
    from burnlab.analysis.features import load_instruments
    from burnlab.attribution.swap import Model, attribute_pair, prompt_sets
    from burnlab.models.components import base_pipeline
    from burnlab.models.encoding import TOKENIZER_FOLDERS, TextConditioner
    from burnlab.models.loading import FAMILY_LABELS, load_model
    from burnlab.sampling.sampler import Sampler
    from burnlab.store.layout import ATTRIBUTION
    from burnlab.toy import asset_dir

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # hub ids only from the local cache: nothing is downloaded
    base_spec = args.base or str(asset_dir("base"))
    reference = load_model(base_spec, allow_pickle=args.allow_pickle)
    tuned = load_model(args.tuned, base=base_spec, allow_pickle=args.allow_pickle)
    pipeline_root = reference.pipeline_folder or tuned.pipeline_folder
    if pipeline_root is None:
        raise UserError(
            f"--base {base_spec}: a single file has no VAE, tokenizer or scheduler of its own; give a "
            f"diffusers folder or a cached hub id as --base (the model the fine-tune started from)."
        )
    components = tuple(reference.components)
    if tuple(tuned.components) != components:
        raise UserError(
            f"{args.tuned} is an {FAMILY_LABELS[tuple(tuned.components)]} model ({', '.join(tuned.components)}) "
            f"and the base {base_spec} an {FAMILY_LABELS[components]} model ({', '.join(components)}): "
            f"the swap needs both of one family; pass as --base the model the fine-tune started from "
            f"(the toy SDXL's is {asset_dir('base_xl')})."
        )
    # the toy world's models (its base or toy SDXL, or a checkpoint burnlab trained from one) get
    # the toy's prompts, size and probe; any other model the study's prompt sets at its native size
    toy = Path(pipeline_root).resolve() in (asset_dir("base").resolve(), asset_dir("base_xl").resolve())
    share_unchanged(reference, tuned)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = sampling_config(toy, args, xl="text_encoder_2" in components)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    base = {
        "path": pipeline_root,
        "revision": None,
        "variant": None,
        "allow_pickle_weights": args.allow_pickle,
        "components": list(components),
    }
    sampler = Sampler(config, base, out / "samples", accelerator)
    pipeline = base_pipeline(base)
    models = [
        Model("REF", hash_json(["diagnose", base_spec]), dict(reference.components)),
        Model("TUNED", hash_json(["diagnose", base_spec, args.tuned]), dict(tuned.components)),
    ]
    # each text encoder's tokenizer: the pipeline names them as the folders they load from
    tokenizers = {name: getattr(pipeline, TOKENIZER_FOLDERS[name]) for name in components if name in TOKENIZER_FOLDERS}
    record = attribute_pair(sampler, *models, out, TextConditioner(tokenizers), pipeline.scheduler)
    atomic_write_json(
        out / ATTRIBUTION,
        {
            "prompts": prompt_sets(config),
            "tuned": {
                "spec": args.tuned,
                "kind": tuned.kind,
                "description": tuned.description,
                "lora_components": list(tuned.lora_components),
            },
            "reference": {"spec": base_spec, "kind": reference.kind, "description": reference.description},
            "pairs": [{"branch": "diagnosis", **record}],
        },
    )
    instruments = load_instruments("auto", args.clip_model, use_probe=toy)
    rule = AttributionRule.load(args.rule)
    found = attribute_run(out, instruments, rule, "diagnose")[0]
    report = analysis.write_diagnosis(out, found)
    print(f"{found.verdict}: {found.sentence}\n  report: {report}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="burnlab-diagnose", description=__doc__.splitlines()[0])
    p.add_argument("tuned", help="the fine-tune: a checkpoint or pipeline folder, hub id, single file or LoRA file")
    p.add_argument("--base", help="the model it was tuned from (default: the toy world's base model)")
    p.add_argument("--out", default="diagnosis", help="output folder (default ./diagnosis)")
    p.add_argument("--activation", help="the activation phrase your captions use (put into the activation prompt)")
    p.add_argument("--prompts-file", help="prompts: a text file (a prompt a line) or a YAML mapping of prompt sets")
    p.add_argument("--seeds", type=int, help="images per prompt (default 9)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the study's)")
    p.add_argument("--guidance", type=float, help="guidance scale (default: the study's)")
    p.add_argument("--resolution", type=int, help="sample width and height (default: the model's / 512)")
    p.add_argument(
        "--clip-model",
        help="CLIP model measuring the distances (a folder or cached hub id); "
        "default: the toy probe on the toy world, else pixels",
    )
    p.add_argument(
        "--rule", type=Path, help="the verdict's threshold file (default burnlab/analysis/attribution_rule.json)"
    )
    p.add_argument("--allow-pickle", action="store_true", help="load .ckpt (pickle) files: they can run code")
    return p


def main(argv=None) -> int:
    from burnlab.analysis.run import AnalysisError

    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()  # the verdict, not loading bars, is what a user reads
    transformers_logging.disable_progress_bar()
    try:
        return diagnose(args)
    except (UserError, AnalysisError) as error:
        message = str(error)
        print(message if message.startswith("burnlab") else f"burnlab-diagnose: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
