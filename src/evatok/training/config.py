"""Typed training configs, YAML presets and dotted command-line overrides."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

PRESETS_DIR = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class TrainConfig:
    """Optimisation settings; `batch_size` is per process and per micro-step."""

    steps: int = 1000
    batch_size: int = 8
    grad_accum_steps: int = 1
    lr: float = 1e-4
    min_lr: float = 1e-6
    warmup_steps: int = 0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    # 0 disables the EMA copy of the weights.
    ema_decay: float = 0.999
    ema_start_step: int = 0
    # "auto" uses an accelerator (CUDA, XPU, MPS) when torch finds one and the CPU otherwise;
    # "cpu" forces the CPU. Several CPU processes talk over gloo.
    device: str = "auto"
    # "no", "bf16" or "fp16" (fp16 adds a gradient scaler).
    mixed_precision: str = "no"
    seed: int = 0
    # The run stops after this many optimizer steps in a row with a non-finite loss or gradient.
    max_nonfinite_in_row: int = 5
    # Learning rate of the discriminator; None uses `lr`.
    disc_lr: float | None = None
    # DDP option: needed when some parameters get no gradient on a step (for example queries
    # beyond every sample's token count, or heads not chosen by any sample on one process).
    find_unused_parameters: bool = True
    # DataLoader worker processes per training process.
    num_workers: int = 0
    # Stage 1: relative probability of each candidate token count, drawn independently for every
    # block of every sample. None draws every count equally often, which is the same as drawing
    # uniformly over all assignments.
    assignment_weights: list[float] | None = None


@dataclass
class LossConfig:
    """Weights and switches of every loss term; a weight of 0 turns its term off."""

    l1_weight: float = 1.0
    perceptual_weight: float = 1.0
    # Frames per clip fed to LPIPS (evenly spaced); None uses every frame.
    perceptual_frames: int | None = None
    # "alex" or "vgg" LPIPS backbone.
    perceptual_net: str = "alex"
    adversarial_weight: float = 0.1
    # "hinge" or "non_saturating".
    adversarial_loss: str = "hinge"
    disc_start_step: int = 20000
    adaptive_weight: bool = True
    adaptive_weight_max: float = 1e4
    lecam_weight: float = 0.0
    lecam_decay: float = 0.999
    # Scales the quantizer loss (codebook term + tokenizer.commitment_weight x commitment term).
    codebook_weight: float = 1.0
    entropy_weight: float = 0.02
    # Transformer PatchGAN discriminator over (time, height, width) patches.
    disc_patch_size: list[int] = field(default_factory=lambda: [4, 8, 8])
    disc_width: int = 256
    disc_depth: int = 4
    disc_heads: int = 4
    # Alignment of a decoder layer's features (through a small trainable MLP) to a frozen V-JEPA2
    # encoder's features of the input video, by negative cosine similarity; 0 turns it off.
    alignment_weight: float = 0.0
    # Hugging Face hub id or local folder of the frozen V-JEPA2 weights (transformers format).
    alignment_encoder: str = "facebook/vjepa2-vitl-fpc64-256"
    # hidden_states index of the encoder (0 is the patch embedding, -1 the last block).
    alignment_encoder_layer: int = -1
    # Index of the tokenizer's decoder layer whose output is aligned; None takes the middle layer.
    alignment_decoder_layer: int | None = None
    # The semantic discriminator (trainable 1D-CNN heads on frozen VideoMAE features of several
    # layers) replaces the PatchGAN when true; adversarial_weight and disc_start_step still apply.
    semantic_disc: bool = False
    semantic_disc_encoder: str = "MCG-NJU/videomae-base"
    semantic_disc_layers: list[int] = field(default_factory=lambda: [4, 8, 12])
    semantic_disc_head_width: int = 256


@dataclass
class DataConfig:
    """Training video source, clip sampling and augmentation."""

    # A folder of videos (searched recursively) or a CSV/TSV manifest; None for recipes with
    # synthetic data. Clip frames and size come from the model's config.
    videos: str | None = None
    # Take every n-th frame; used when `fps` is None.
    frame_stride: int = 1
    fps: float | None = None
    # Crop a random window of the resized frames (else the centre one).
    random_crop: bool = True
    horizontal_flip: bool = True
    # Fraction of files held out of training, chosen by a stable hash of each path.
    held_out_fraction: float = 0.1
    split_seed: int = 0
    # Folder for a uint8 decode cache; None decodes on every epoch.
    cache_dir: str | None = None
    # Maximum clips taken from one video (evenly spaced); None takes them all.
    max_clips_per_video: int | None = None
    # Fraction of unreadable files tolerated before building the dataset fails.
    max_bad_fraction: float = 0.0
    # Number of synthetic samples for recipes without real videos.
    synthetic_samples: int = 64


@dataclass
class RunConfig:
    """Run folder, logging and checkpoint intervals, and stop limits."""

    dir: str = "runs/default"
    log_every: int = 10
    save_every: int = 500
    keep_checkpoints: int = 2
    # Continue from the newest checkpoint in `dir` when one exists.
    resume: bool = True
    # Stop this invocation after this many optimizer steps or wall-clock seconds, with a
    # checkpoint, for example to fit a cluster's job time limit. The next start resumes.
    stop_after_steps: int | None = None
    stop_after_seconds: float | None = None
    progress_bar: bool = True
    # Trackers for Accelerate: "tensorboard", or an empty list for none.
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])


@dataclass
class ExperimentConfig:
    """A whole run: training sections typed here, the model sections passed through as mappings."""

    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)
    # Model settings owned by the model code (for example the tokenizer's own config).
    tokenizer: dict[str, Any] = field(default_factory=dict)


def settings_from_section(settings_class: type, config: DictConfig, name: str, nested: tuple[str, ...] = ()) -> Any:
    """Build a settings dataclass from the config section `name`, rejecting unknown keys by name.

    Keys in `nested` (such as a ``train:`` mapping of overrides) belong to other code and are skipped.
    """
    section = config.get(name) or {}
    data = dict(OmegaConf.to_container(section, resolve=True)) if isinstance(section, DictConfig) else dict(section)
    for key in nested:
        data.pop(key, None)
    known = {item.name for item in fields(settings_class)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {name} keys {unknown}: valid keys are {sorted(known | set(nested))}")
    return settings_class(**data)


def resolve_preset_path(name_or_path: str | Path) -> Path:
    """Find a preset by file path, or by name (`tiny`, `configs/tiny.yaml`) among the shipped ones."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = PRESETS_DIR / f"{path.stem}.yaml"
    if shipped.is_file():
        return shipped
    available = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
    raise FileNotFoundError(
        f"config {str(name_or_path)!r} not found: it is not a file and not a shipped preset "
        f"(available presets: {', '.join(available) or 'none'}); pass a YAML path or a preset name"
    )


def read_preset(name_or_path: str | Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    """Read a preset YAML; a top-level `base: NAME` key first loads that preset under it."""
    path = resolve_preset_path(name_or_path)
    if path.resolve() in seen:
        raise ValueError(f"preset {path} names itself as a base through {[str(p) for p in seen]}: remove the cycle")
    preset = OmegaConf.load(path)
    if not isinstance(preset, DictConfig):
        raise ValueError(f"preset {path} is not a mapping of sections such as `tokenizer:`")
    base = preset.pop("base", None)
    if base is None:
        return preset
    return OmegaConf.merge(read_preset(base, (*seen, path.resolve())), preset)


def load_config(
    name_or_path: str | Path | None = None, overrides: list[str] | None = None
) -> DictConfig:
    """Merge defaults, a YAML preset and dotted `key=value` overrides into a validated config."""
    config = OmegaConf.structured(ExperimentConfig)
    # Sections other than the typed ones (owned by other parts of the package) may appear in
    # a preset, so the top level accepts new keys while each typed section stays strict.
    OmegaConf.set_struct(config, False)
    for section in ("train", "loss", "data", "run"):
        OmegaConf.set_struct(config[section], True)
    if name_or_path is not None:
        config = OmegaConf.merge(config, read_preset(name_or_path))
    if overrides:
        bad = [item for item in overrides if "=" not in item]
        if bad:
            raise ValueError(
                f"invalid override {bad[0]!r}: overrides are dotted `key=value` pairs, "
                "for example train.lr=3e-4 or run.dir=runs/test"
            )
        try:
            config = OmegaConf.merge(config, OmegaConf.from_dotlist(list(overrides)))
        except OmegaConfBaseException as error:
            # For example a misspelt key of a typed section. OmegaConf's first line names the key
            # and suggests the right one; the rest of its message lists internal details.
            first_line = str(error).splitlines()[0]
            raise ValueError(f"invalid override among {list(overrides)}: {first_line}") from error
    validate_config(config)
    return config


def validate_config(config: DictConfig) -> None:
    """Raise ValueError for settings that would fail later in the run."""
    train = config.train
    if train.mixed_precision not in ("no", "bf16", "fp16"):
        raise ValueError(
            f"invalid train.mixed_precision {train.mixed_precision!r}: use no, bf16 or fp16"
        )
    if train.device not in ("auto", "cpu"):
        raise ValueError(f"invalid train.device {train.device!r}: use auto or cpu")
    for name in ("steps", "batch_size", "grad_accum_steps"):
        if train[name] < 1:
            raise ValueError(f"invalid train.{name} {train[name]}: it must be at least 1")
    if train.warmup_steps < 0:
        raise ValueError(f"invalid train.warmup_steps {train.warmup_steps}: it must be at least 0")
    if not 0.0 <= train.ema_decay < 1.0:
        raise ValueError(f"invalid train.ema_decay {train.ema_decay}: use a value in [0, 1)")
    if len(train.betas) != 2:
        raise ValueError(f"invalid train.betas {list(train.betas)}: AdamW takes two values")
    if config.loss.adversarial_loss not in ("hinge", "non_saturating"):
        raise ValueError(
            f"invalid loss.adversarial_loss {config.loss.adversarial_loss!r}: use hinge or "
            "non_saturating"
        )
    loss = config.loss
    if loss.alignment_weight < 0:
        raise ValueError(f"invalid loss.alignment_weight {loss.alignment_weight}: use 0 (off) or a positive weight")
    if loss.semantic_disc and not loss.semantic_disc_layers:
        raise ValueError("loss.semantic_disc is true but loss.semantic_disc_layers is empty: list VideoMAE layer indices")
    if config.run.log_every < 1 or config.run.save_every < 1:
        raise ValueError(
            f"invalid run.log_every {config.run.log_every} / run.save_every "
            f"{config.run.save_every}: both must be at least 1"
        )


def save_resolved_config(config: DictConfig, path: str | Path) -> None:
    """Write the fully resolved config as YAML so the run can be repeated from it."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(OmegaConf.to_yaml(config, resolve=True))
