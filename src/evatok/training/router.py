"""Stage 3: the router, trained with cross-entropy on each clip's best assignment in a label store.

The best assignment is recomputed from the stored per-assignment LPIPS and token counts with the
search reward at ``router_train.w_q`` (the search run's weight by default), so one label folder
trains routers for several trade-offs. Clips are read from the store's video folder with the
store's clip keys (``<video path below the folder>#<clip number>``) and frame sampling, and the
files are split into training and held-out ones by the same stable hash as stage 1
(``data.held_out_fraction``, ``data.split_seed``).

Settings live in two preset sections. ``router:`` contains the architecture as ``RouterConfig``
keys, and frames, size and candidates default to the ``tokenizer:`` section. ``router_train:``
contains the label folder, the reward weights, augmentation and a ``train:`` mapping that
replaces the keys it names in the shared ``train:`` section, because the router needs another
learning rate and batch than the tokenizer of the same preset.

Augmentation: a horizontal flip is on by default, on the assumption that a mirrored clip has the
same best assignment (its content and motion are the same, only mirrored). A random crop is off
by default, because the labels were measured on the centre crop and another window may have
another best assignment.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset

from evatok.models.router import Router, RouterConfig
from evatok.search.store import LabelStore
from evatok.training.config import settings_from_section
from evatok.training.recipe import LossOutput, Recipe, StepContext
from evatok.video.clips import ClipSpec
from evatok.video.datasets import ClipDataset, list_videos, split_by_file

logger = logging.getLogger(__name__)


@dataclass
class RouterTrainSettings:
    """The ``router_train:`` section without its ``train:`` overrides."""

    # Label folder written by `evatok search`.
    labels: str | None = None
    # Quality weight of the reward that picks each clip's best assignment; None uses the search
    # run's weight. w_l None means 2 - w_q.
    w_q: float | None = None
    w_l: float | None = None
    # Video folder of the labels; None uses the folder stored in the label folder's meta.json.
    videos: str | None = None
    horizontal_flip: bool = True
    random_crop: bool = False

    @classmethod
    def from_config(cls, config: DictConfig) -> RouterTrainSettings:
        """Read the settings from a run config, rejecting unknown keys by name."""
        return settings_from_section(cls, config, "router_train", nested=("train",))


def router_config_of(config: DictConfig) -> RouterConfig:
    """Return the typed router config of a run config, with geometry taken from ``tokenizer:``."""
    section = config.get("router")
    if section is None:
        raise ValueError("the config has no `router:` section: use a preset such as --config tiny")
    data = OmegaConf.to_container(section, resolve=True)
    tokenizer = config.get("tokenizer") or {}
    for key in ("frames", "height", "width", "channels", "candidates"):
        if key not in data and key in tokenizer:
            data[key] = list(tokenizer[key]) if key == "candidates" else tokenizer[key]
    if "num_blocks" not in data and "frames" in tokenizer and "patch_frames" in tokenizer:
        data["num_blocks"] = int(tokenizer["frames"]) // int(tokenizer["patch_frames"])
    return RouterConfig.from_dict(data)


def apply_train_overrides(config: DictConfig, section_name: str = "router_train", target: str = "train") -> list[str]:
    """Replace the ``<target>:`` keys that ``<section_name>.<target>`` names; return the replaced keys."""
    section = config.get(section_name)
    overrides = section.get(target) if section is not None else None
    if not overrides:
        return []
    unknown = sorted(set(overrides) - set(config[target]))
    if unknown:
        raise ValueError(f"unknown {section_name}.{target} keys {unknown}: use keys of the {target} section")
    config[target] = OmegaConf.merge(config[target], overrides)
    return sorted(overrides)


def check_compatible(router: RouterConfig, meta: dict[str, Any], labels: Path) -> None:
    """Raise ValueError when the router's classes or clip length differ from the label store's."""
    tokenizer = meta.get("tokenizer", {})
    store_space = (tuple(tokenizer.get("candidates", ())), tokenizer.get("frames", 0) // max(1, tokenizer.get("patch_frames", 1)))
    if store_space != (router.candidates, router.num_blocks):
        raise ValueError(
            f"{labels} contains labels for candidates {store_space[0]} over {store_space[1]} blocks, but the "
            f"router predicts candidates {router.candidates} over {router.num_blocks} blocks: use the "
            "preset of the proxy that made the labels"
        )
    frames = meta["clip_spec"]["num_frames"]
    if frames != router.frames:
        raise ValueError(
            f"{labels} contains labels for {frames}-frame clips, but router.frames={router.frames}: "
            "the clip numbers would not match; set router.frames to the label clips' length"
        )


def label_table(store: LabelStore, w_q: float | None, w_l: float | None) -> dict[str, int]:
    """Return each stored clip's best class index under the reward at ``w_q`` and ``w_l``."""
    labels = store.labels(w_q=w_q, w_l=w_l) if w_q is not None else store.labels()
    return dict(zip(labels["clip_key"], labels["best_index"].astype(int), strict=True))


def split_videos(videos: Path, held_out_fraction: float, split_seed: int) -> tuple[list[Path], list[Path]]:
    """Return the (training, held-out) files under ``videos``, split by a hash of the relative path."""
    paths = list_videos(videos)
    if not paths:
        raise FileNotFoundError(f"no videos found under {videos}: give the folder the labels were made from")
    return split_by_file(paths, held_out_fraction, seed=split_seed, root=videos)


class LabeledClips(Dataset):
    """Clips of a ClipDataset that have a label, each with its class index as "target"."""

    def __init__(self, clips: ClipDataset, root: Path, labels: dict[str, int]) -> None:
        self.clips = clips
        self.keys: list[str] = []
        self.positions: list[int] = []
        for position, (path, number, _, _) in enumerate(clips.items):
            key = f"{Path(path).relative_to(root).as_posix()}#{number}"
            if key in labels:
                self.keys.append(key)
                self.positions.append(position)
        self.targets = [labels[key] for key in self.keys]

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds random crops."""
        self.clips.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, item: int) -> dict[str, Any]:
        sample = self.clips[self.positions[item]]
        return {"video": sample["video"], "mask": sample["mask"], "target": self.targets[item]}


def labeled_clips(
    store: LabelStore,
    router: RouterConfig,
    labels: dict[str, int],
    files: list[Path],
    videos: Path,
    *,
    random_crop: bool = False,
    cache_dir: str | None = None,
    seed: int = 0,
) -> LabeledClips:
    """Return the labelled clips of ``files``, cut with the store's sampling at the router's size."""
    meta = store.meta()
    clip_spec = meta["clip_spec"]
    spec = ClipSpec(
        num_frames=router.frames,
        height=router.height,
        width=router.width,
        frame_stride=clip_spec["frame_stride"],
        fps=clip_spec["fps"],
        short_policy=clip_spec["short_policy"],
        crop="random" if random_crop else "center",
    )
    clips = ClipDataset(
        files, spec, max_clips_per_video=meta.get("max_clips_per_video"), max_bad_fraction=1.0,
        cache_dir=cache_dir, seed=seed,
    )
    return LabeledClips(clips, videos, labels)


class RouterRecipe(Recipe):
    """Train the router with cross-entropy on the best assignment of every labelled training clip."""

    def __init__(self, config: DictConfig) -> None:
        super().__init__(config)
        replaced = apply_train_overrides(config)
        if replaced:
            logger.info("router_train.train sets train.%s for the router", ", train.".join(replaced))
        self.settings = RouterTrainSettings.from_config(config)
        if self.settings.labels is None:
            raise ValueError("router_train.labels is not set: pass router_train.labels=DIR (a folder of `evatok search`)")
        self.store = LabelStore(self.settings.labels)
        meta = self.store.meta()
        clip_spec = meta["clip_spec"]
        self.router_config = router_config_of(config)
        self.router_config.frame_stride = int(clip_spec["frame_stride"])
        self.router_config.fps = clip_spec["fps"]
        check_compatible(self.router_config, meta, Path(self.settings.labels))
        self.videos = Path(self.settings.videos or meta["videos"])

    def build_model(self) -> nn.Module:
        model = Router(self.router_config)
        logger.info("router: %.2fM parameters, %d classes", model.num_parameters() / 1e6, model.space.size)
        return model

    def build_dataset(self) -> Dataset:
        data = self.config.data
        labels = label_table(self.store, self.settings.w_q, self.settings.w_l)
        train_files, held_out = split_videos(self.videos, data.held_out_fraction, data.split_seed)
        dataset = labeled_clips(
            self.store, self.router_config, labels, train_files, self.videos,
            random_crop=self.settings.random_crop, cache_dir=data.cache_dir, seed=self.config.train.seed,
        )
        if len(dataset) == 0:
            raise ValueError(
                f"no labelled clips among the {len(train_files)} training files under {self.videos}: "
                f"{self.settings.labels} holds {len(labels)} clips; check router_train.videos and data.held_out_fraction"
            )
        classes = np.bincount(np.asarray(dataset.targets), minlength=self.router_config.space.size)
        logger.info(
            "router training on %d labelled clips from %d files (%d files held out), %d distinct classes",
            len(dataset), len(train_files), len(held_out), int((classes > 0).sum()),
        )
        return dataset

    def training_loss(self, model: nn.Module, batch: dict[str, Any], ctx: StepContext) -> LossOutput:
        video: torch.Tensor = batch["video"]
        target: torch.Tensor = batch["target"].long()
        if self.settings.horizontal_flip:
            # NOTE: the label of a mirrored clip is assumed, not measured, because the search never
            # scores mirrored clips.
            flip = torch.rand(video.shape[0], generator=ctx.generator) < 0.5
            video = torch.where(flip.to(video.device)[:, None, None, None, None], video.flip(-1), video)
        logits = model(video).float()
        loss = F.cross_entropy(logits, target)
        top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        terms = {
            "ce": loss.detach(),
            "top1": (top5[:, 0] == target).float().mean().detach(),
            "top5": (top5 == target[:, None]).any(dim=-1).float().mean().detach(),
        }
        return LossOutput(loss=loss, terms=terms)

    def save_final(self, model: nn.Module, ema_model: nn.Module | None, directory: Path) -> None:
        """Write the EMA router (or the raw one without EMA) with save_pretrained, config inside."""
        (ema_model or model).save_pretrained(directory)
        if ema_model is not None:
            model.save_pretrained(directory / "raw")
