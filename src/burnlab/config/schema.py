"""Config schemas: one dataclass per concern, and the closed sets of names they allow.

Each field's default here is its one default: the option YAMLs under conf/ hold only what
differs from it (a model's path, the toy's batch size). The dataclasses check their own values
in `__post_init__`; what spans several groups or reaches other parts of burnlab is checked by
burnlab.config.compose, which also registers these schemas with Hydra.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from burnlab.errors import ConfigError
from burnlab.store.layout import FAMILIES, TRAINABLE

BASE = "base"
DTYPE_NAMES = ("auto", "float32", "float16", "bfloat16")
SAVE_DTYPES = ("float32", "float16", "bfloat16")
ADAMW_IMPLS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for_loop": {"foreach": False}}  # AdamW kwargs
ADAPTERS = ("full", "lora")
KEEP_STATES = ("auto", "always", "never")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")  # diffusers' get_scheduler names
MIXED_PRECISIONS = ("no", "fp16", "bf16")  # accelerate's
SAMPLING_SCHEDULERS = ("ddim", "ddpm", "euler", "dpm")  # burnlab.sampling.sampler maps each to its diffusers class
WANDB_MODES = ("auto", "online", "offline", "disabled")
# the largest image side (training resolution, sampled width and height): SD 1.5 is trained at
# 512 and SDXL at 1024, and a side far beyond (data.resolution=100000: 10^10 pixels per image)
# would only exhaust the memory after a long wait, not stop with an error
MAX_SIDE = 2048
_FOLDER_NAME = re.compile(r"^[^./\\\x00][^/\\\x00]*$")


def _is_set(value) -> bool:
    return value is not MISSING and value != "???"


def _require(ok: bool, key: str, value, allowed: str) -> None:
    if _is_set(value) and not ok:
        raise ConfigError(key, value, allowed)


@dataclass
class ModelConfig:
    path: str = MISSING  # hub id (stable-diffusion-v1-5/stable-diffusion-v1-5) or a local diffusers folder
    revision: Optional[str] = None  # hub revision (branch, tag or commit); None = main
    variant: Optional[str] = None  # weight file variant on the hub, e.g. fp16
    # dtype of the frozen parts (VAE, untrained component): auto = float16 on CUDA, float32 on CPU; trained ones stay
    # float32
    dtype: str = "auto"
    # an architecture in burnlab/models/architectures/ to build at `path` with seeded random weights when missing
    build: Optional[str] = None
    build_seed: int = 0  # seed of the random weights `build` draws
    # the learning rates the study's experiments use for this model (baseline, lo, hi)
    study_lrs: Dict[str, float] = field(default_factory=dict)
    # also load pickle weights (.bin, .ckpt, .pt: they can run code) where a part has no .safetensors; only for a model
    # you trust
    allow_pickle_weights: bool = False
    # sd (one text encoder: SD 1.x, 2.x) or sdxl (two); null = read from the model's model_index.json (a hub id's
    # from the hub or its cache); a local folder's own must agree
    family: Optional[str] = None
    # when `path` is a single-file checkpoint (A1111/LDM or SGM keys): the diffusers folder or cached hub id of its
    # family whose configs, tokenizers and scheduler complete it (converted once into the run store's cache/models/)
    single_file_configs: Optional[str] = None

    def __post_init__(self):
        _require(self.dtype in DTYPE_NAMES, "dtype", self.dtype, "one of " + ", ".join(DTYPE_NAMES))
        _require(
            self.family is None or self.family in FAMILIES,
            "family",
            self.family,
            "one of " + ", ".join(FAMILIES) + ", or null to read it from the model",
        )
        _require(
            bool(str(self.path).strip()),
            "path",
            self.path,
            "a hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5 or a local diffusers folder",
        )


@dataclass
class DataConfig:
    path: str = MISSING  # folder of images with same-name .txt captions, or with metadata.jsonl
    resolution: int = 64  # square training size: short side resized to it, then centre-cropped
    flip_p: float = 0.0  # probability of a horizontal flip per image per epoch
    caption_dropout: float = 0.0  # probability of training on the empty caption (for guidance)
    default_caption: Optional[str] = None  # caption for images without one; None = error
    caption_encoding: Optional[str] = None  # fallback for caption files that are not UTF-8 (e.g. cp1252); None = error
    background: str = "white"  # colour under transparent pixels: a name or #rrggbb
    max_image_pixels: int = 178956970  # larger images are a problem, not decoded (PIL's own refusal threshold)
    skip_bad: bool = False  # leave out bad images and captions (warned, listed in study.json) instead of stopping

    def __post_init__(self):
        _require(
            isinstance(self.resolution, int) and 8 <= self.resolution <= MAX_SIDE and self.resolution % 8 == 0,
            "resolution",
            self.resolution,
            f"a positive multiple of 8 (the VAE downsamples by 8) up to {MAX_SIDE}",
        )
        _require(0.0 <= self.flip_p <= 1.0, "flip_p", self.flip_p, "a probability in [0, 1]")
        _require(0.0 <= self.caption_dropout < 1.0, "caption_dropout", self.caption_dropout, "a probability in [0, 1)")
        _require(
            self.caption_encoding is None or self._is_text_encoding(self.caption_encoding),
            "caption_encoding",
            self.caption_encoding,
            "null or a text encoding Python knows, e.g. cp1252 or latin-1",
        )
        _require(
            self._is_opaque_colour(self.background),
            "background",
            self.background,
            "an opaque colour: a name such as white or black, or #rrggbb",
        )
        _require(self.max_image_pixels >= 1, "max_image_pixels", self.max_image_pixels, "an integer >= 1")

    @staticmethod
    def _is_text_encoding(name: str) -> bool:
        # str.encode looks the name up (codecs.lookup) and refuses codecs that are not text
        # encodings (rot13, zlib, hex)
        try:
            "a".encode(name)
            return True
        except LookupError:
            return False

    @staticmethod
    def _is_opaque_colour(value: str) -> bool:
        from PIL import ImageColor

        try:
            return len(ImageColor.getrgb(value)) == 3  # rgba(...) and #rrggbbaa give 4
        except ValueError:
            return False


@dataclass
class TrainConfig:
    optimizer: str = "adamw"  # adamw (torch.optim.AdamW)
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    eps: float = 1e-8  # AdamW epsilon
    weight_decay: float = 1e-2  # AdamW decoupled weight decay
    batch_size: int = 1  # images per micro-batch (per process)
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    lr_scheduler: str = "constant"  # constant | constant_with_warmup | linear | cosine (per stage)
    lr_warmup_steps: int = 0  # warmup optimizer steps at the start of each stage
    max_grad_norm: float = 1.0  # gradient clipping; 0 disables
    mixed_precision: str = "no"  # no | fp16 | bf16 (accelerate autocast; weights stay float32)
    gradient_checkpointing: bool = False  # trade compute for memory in the trained components
    seed: int = 555  # fixes data order, flips, caption dropout, noise and timesteps
    state_every_epochs: int = 25  # resumable training state saved every N epochs (and at save epochs)
    # skip (and count) batches whose loss or gradient is NaN/inf instead of stopping the stage
    skip_nonfinite: bool = False
    # fused | foreach | for_loop: torch's AdamW kernels (fused measured fastest: README, Training throughput)
    adamw_impl: str = "fused"
    # the UNet's 1x1 convolutions run as matrix multiplies (burnlab.training.fast_paths; faster on the CPU: README,
    # Training throughput)
    pointwise_as_linear: bool = False
    # UNet activations in channels-last memory layout (no gain measured on the CPU: README, Training throughput)
    channels_last: bool = False
    tf32: bool = True  # TensorFloat-32 matmuls and convolutions on GPUs that have them (Ampere+); no effect elsewhere
    compile: bool = False  # torch.compile the UNet (slower on the CPU toy: README, Training throughput)
    # float32 | float16 | bfloat16: checkpoints no later stage starts from (a parent's final one stays float32)
    save_dtype: str = "float32"
    noise_scheduler: str = "ddpm"  # training noise schedule, read from the model's scheduler config
    # full: train the components' weights; lora: train LoRA adapters on frozen weights (settings: lora.*)
    adapter: str = "full"
    # auto | always | never: keep the training state at each checkpoint epoch, so that a longer run of the stage
    # continues from it (auto: the stages whose epochs a sweep job sets)
    keep_states: str = "auto"

    def __post_init__(self):
        _require(self.optimizer == "adamw", "optimizer", self.optimizer, "adamw")
        _require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "betas",
            self.betas,
            "two numbers in [0, 1), e.g. [0.9, 0.999]",
        )
        _require(self.eps > 0, "eps", self.eps, "a number > 0")
        _require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        _require(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        _require(
            self.gradient_accumulation_steps >= 1,
            "gradient_accumulation_steps",
            self.gradient_accumulation_steps,
            "an integer >= 1",
        )
        _require(
            self.lr_scheduler in LR_SCHEDULERS, "lr_scheduler", self.lr_scheduler, "one of " + ", ".join(LR_SCHEDULERS)
        )
        _require(self.lr_warmup_steps >= 0, "lr_warmup_steps", self.lr_warmup_steps, "an integer >= 0")
        _require(self.max_grad_norm >= 0, "max_grad_norm", self.max_grad_norm, "a number >= 0 (0 = off)")
        _require(
            self.mixed_precision in MIXED_PRECISIONS,
            "mixed_precision",
            self.mixed_precision,
            "one of " + ", ".join(MIXED_PRECISIONS),
        )
        _require(self.state_every_epochs >= 1, "state_every_epochs", self.state_every_epochs, "an integer >= 1")
        _require(self.noise_scheduler == "ddpm", "noise_scheduler", self.noise_scheduler, "ddpm")
        _require(self.adamw_impl in ADAMW_IMPLS, "adamw_impl", self.adamw_impl, "one of " + ", ".join(ADAMW_IMPLS))
        _require(self.save_dtype in SAVE_DTYPES, "save_dtype", self.save_dtype, "one of " + ", ".join(SAVE_DTYPES))
        _require(self.adapter in ADAPTERS, "adapter", self.adapter, "one of " + ", ".join(ADAPTERS))
        _require(self.keep_states in KEEP_STATES, "keep_states", self.keep_states, "one of " + ", ".join(KEEP_STATES))


@dataclass
class LoraConfig:
    """The LoRA adapters of `train.adapter=lora`, built with peft as diffusers' LoRA training
    examples build them (burnlab.models.adapters)."""

    rank: int = 4  # r: the adapter's inner dimension
    alpha: float = 4.0  # lora_alpha: the adapter's update is scaled by alpha / rank
    dropout: float = 0.0  # lora_dropout on the adapter's input while it trains
    # peft's init_lora_weights: gaussian (diffusers' examples) or true (Kaiming A), both with B = 0; false = random B
    init: Any = "gaussian"
    target_modules: Dict[str, List[str]] = field(
        default_factory=lambda: {
            "unet": ["to_q", "to_k", "to_v", "to_out.0"],
            # per component: module names (or name endings) that get an adapter; SDXL's text_encoder_2
            # (the same CLIP layer names) takes text_encoder's list unless it has its own
            "text_encoder": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
        }
    )

    def __post_init__(self):
        _require(isinstance(self.rank, int) and self.rank >= 1, "rank", self.rank, "an integer >= 1, e.g. 4")
        _require(self.alpha > 0 and math.isfinite(self.alpha), "alpha", self.alpha, "a number > 0, e.g. the rank")
        _require(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "a probability in [0, 1)")
        # peft's other initialisations (pissa, olora, ...) rewrite the base weights
        _require(
            isinstance(self.init, bool) or self.init == "gaussian",
            "init",
            self.init,
            "true, false or gaussian (peft's init_lora_weights values that leave the base weights "
            "alone, so that a LoRA file holds the whole change)",
        )
        for name, modules in self.target_modules.items():
            _require(
                name in TRAINABLE,
                f"target_modules.{name}",
                list(modules),
                f"keys from {', '.join(TRAINABLE)} (`{name}` is no component)",
            )
            _require(
                len(modules) > 0 and all(str(m).strip() for m in modules),
                f"target_modules.{name}",
                list(modules),
                "a non-empty list of module names, e.g. [to_q, to_k, to_v, to_out.0]",
            )


@dataclass
class ValidationConfig:
    every_n_epochs: int = 10  # validation pass every N epochs and before the first step; 0 = off
    split_proportion: float = 0.15  # share of the data held out when `path` is unset
    split_seed: int = 7  # which images are held out
    path: Optional[str] = None  # a separate validation folder instead of a split
    stabilize_count: int = 8  # training images in the fixed "stabilized loss" subset; 0 = off
    seed: int = 1234  # noise and timesteps of every validation pass (isolated from training)
    repeats: int = 4  # noise draws per image per pass (lowers the variance of a pass)
    timesteps: List[int] = field(default_factory=list)  # fixed timestep grid; empty = seeded random
    batch_size: int = 32  # images per validation forward pass

    def __post_init__(self):
        _require(self.every_n_epochs >= 0, "every_n_epochs", self.every_n_epochs, "an integer >= 0")
        _require(0.0 <= self.split_proportion < 1.0, "split_proportion", self.split_proportion, "a fraction in [0, 1)")
        _require(self.stabilize_count >= 0, "stabilize_count", self.stabilize_count, "an integer >= 0")
        _require(self.repeats >= 1, "repeats", self.repeats, "an integer >= 1")
        # the upper bound (the scheduler's num_train_timesteps) is checked once the model is known
        _require(
            all(isinstance(t, int) and t >= 0 for t in self.timesteps),
            "timesteps",
            self.timesteps,
            "integer timesteps >= 0 and below the scheduler's num_train_timesteps",
        )
        _require(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")


@dataclass
class PromptConfig:
    prompt: str = MISSING  # the text
    activation: bool = False  # whether the prompt holds the style's activation phrase
    expect: Dict[str, str] = field(default_factory=dict)  # what a probe should see (toy world labels)


@dataclass
class SamplingConfig:
    prompts: Dict[str, PromptConfig] = field(default_factory=dict)  # prompt set name -> prompt
    images_per_prompt: int = 9  # seeds per prompt: seed, seed+1, ...
    seed: int = 1000  # first seed; each seed fixes one initial noise, the same at every checkpoint
    guidance_scale: float = 7.5  # classifier-free guidance
    steps: int = 25  # denoising steps
    scheduler: str = "ddim"  # ddim | ddpm | euler | dpm
    negative_prompt: str = ""  # unconditional text for guidance
    width: Optional[int] = None  # None = the model's native size
    height: Optional[int] = None  # None = the model's native size
    batch_size: int = 32  # images per pipeline call
    dtype: str = "auto"  # pipeline precision: auto = float16 on CUDA, float32 on CPU
    every_n_epochs: int = 0  # samples during training every N epochs; 0 = off
    testing_plan: bool = True  # sample every checkpoint of the testing plan after training
    attribution: bool = True  # then sample the swap corners that say which component burned (burnlab.attribution.swap)

    def __post_init__(self):
        _require(self.images_per_prompt >= 1, "images_per_prompt", self.images_per_prompt, "an integer >= 1")
        _require(self.guidance_scale >= 0, "guidance_scale", self.guidance_scale, "a number >= 0")
        _require(self.steps >= 1, "steps", self.steps, "an integer >= 1")
        _require(
            self.scheduler in SAMPLING_SCHEDULERS,
            "scheduler",
            self.scheduler,
            "one of " + ", ".join(SAMPLING_SCHEDULERS),
        )
        for key in ("width", "height"):
            value = getattr(self, key)
            _require(
                value is None or (8 <= value <= MAX_SIDE and value % 8 == 0),
                key,
                value,
                f"a positive multiple of 8 up to {MAX_SIDE}, or null for the model's size",
            )
        for name in self.prompts:
            check_folder_name(f"prompts.{name}", name, "a prompt set's name (its samples' folder)")
        _require(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        _require(self.dtype in DTYPE_NAMES, "dtype", self.dtype, "one of " + ", ".join(DTYPE_NAMES))
        _require(self.every_n_epochs >= 0, "every_n_epochs", self.every_n_epochs, "an integer >= 0")


@dataclass
class WandbConfig:
    mode: str = "auto"  # auto (online with a key, else offline) | online | offline | disabled
    project: str = "burnlab"  # W&B project
    entity: Optional[str] = None  # W&B team or user; None = the key's default

    def __post_init__(self):
        # built inside `logger`, whose errors _to_object places under `logger.`: the key carries `wandb.`
        _require(self.mode in WANDB_MODES, "wandb.mode", self.mode, "one of " + ", ".join(WANDB_MODES))


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)  # Weights & Biases mirror of the run store
    tensorboard: bool = False  # TensorBoard event files under the run dir
    progress: bool = True  # tqdm progress bar per stage


@dataclass
class AnalysisConfig:
    # CLIP for CLIP score, variability and style distance: hub id (openai/clip-vit-large-patch14) or local folder; null
    # = none
    clip_model: Optional[str] = None


@dataclass
class StageConfig:
    parent: str = BASE  # another stage's name, or `base` for the base model
    # components to train, from unet, text_encoder and (SDXL) text_encoder_2; null = every component of the model
    train: Optional[List[str]] = None
    lr: float = MISSING  # learning rate (of every trained component unless one of its own is set below)
    text_encoder_lr: Optional[float] = None  # a separate learning rate for the text encoder (SDXL: both encoders)
    # SDXL: the second text encoder's own rate (kohya's --learning_rate_te2); null = text_encoder_lr, else lr
    text_encoder_2_lr: Optional[float] = None
    epochs: int = MISSING  # epochs this stage trains
    # epochs to checkpoint; the last is always saved, those beyond `epochs` are dropped (with a note)
    save_epochs: List[int] = field(default_factory=list)

    def __post_init__(self):
        if self.train is not None:
            _require(
                len(self.train) > 0,
                "train",
                list(self.train),
                "a non-empty list of components from " + ", ".join(TRAINABLE) + ", or null for all of the model's",
            )
            for name in self.train:
                _require(
                    name in TRAINABLE,
                    "train",
                    list(self.train),
                    f"components from {', '.join(TRAINABLE)} (`{name}` is unknown)",
                )
            _require(len(set(self.train)) == len(self.train), "train", list(self.train), "no repeats")
        _require(
            isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr),
            "lr",
            self.lr,
            "a learning rate > 0, e.g. 1.5e-6",
        )
        for key in ("text_encoder_lr", "text_encoder_2_lr"):
            value = getattr(self, key)
            _require(value is None or value > 0, key, value, "a learning rate > 0, or null to use `lr`")
        _require(self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        for epoch in self.save_epochs:
            _require(
                isinstance(epoch, int) and epoch >= 1,
                "save_epochs",
                list(self.save_epochs),
                "a list of epochs >= 1, e.g. [100, 300, 500]",
            )
        # an epoch sweep (epochs=100,300,500) keeps one save_epochs list for every length: what lies
        # beyond this stage's length is dropped, and the identity sees the list as it is trained
        self.dropped_save_epochs = sorted(e for e in set(self.save_epochs) if e > self.epochs)
        self.save_epochs = sorted(set(self.save_epochs) - set(self.dropped_save_epochs))

    def checkpoint_epochs(self) -> List[int]:
        return sorted(set(self.save_epochs) | {self.epochs})

    def component_lr(self, component: str) -> float:
        """The learning rate of one trained component."""
        if component == "text_encoder_2" and self.text_encoder_2_lr:
            return self.text_encoder_2_lr
        if component != "unet" and self.text_encoder_lr:
            return self.text_encoder_lr
        return self.lr


@dataclass
class PathsConfig:
    runs: str = "runs"  # the run store root: run dirs and the shared stage/sample cache


@dataclass
class BurnlabConfig:
    name: str = "study"  # the study's name: run dir and W&B group
    paths: PathsConfig = field(default_factory=PathsConfig)  # where the run store lives
    model: ModelConfig = field(default_factory=ModelConfig)  # the base model
    data: DataConfig = field(default_factory=DataConfig)  # the fine-tuning data
    train: TrainConfig = field(default_factory=TrainConfig)  # optimizer, batch, precision, seed
    # the adapters when train.adapter=lora (part of no identity otherwise)
    lora: LoraConfig = field(default_factory=LoraConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)  # held-out + stabilized loss
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # prompts and seeds per checkpoint
    logger: LoggerConfig = field(default_factory=LoggerConfig)  # W&B, TensorBoard, progress bar
    stages: Dict[str, StageConfig] = field(default_factory=dict)  # the study's stage graph
    analyze: bool = True  # build grids, GIFs, plots and the report after the run
    # what that analysis measures with (part of no stage identity)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)


def check_folder_name(key: str, value, what: str) -> None:
    """A config value that becomes one folder's name in the run store must stay one: not empty,
    no `/` or `\\`, not starting with `.` (`..` would climb out of `paths.runs`; `.` starts the
    store's temp names)."""
    if not (isinstance(value, str) and _FOLDER_NAME.match(value)):
        raise ConfigError(
            key,
            value,
            f"{what}: one folder name inside paths.runs, not empty, without / or \\ "
            f"and not starting with a dot, e.g. burn_unet_s1",
        )
