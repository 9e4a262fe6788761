"""Stage 1: the proxy tokenizer, trained with a random assignment for every sample.

Samples with different assignments share a batch (the tokenizer pads and masks them), so the
proxy learns to reconstruct under any assignment, which the assignment search relies on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset

from evatok.losses import (
    PerceptualLoss,
    adaptive_adversarial_weight,
    discriminator_loss,
    frozen_forward,
    generator_adversarial_loss,
    lecam_regularization,
    masked_l1,
)
from evatok.metrics.codebook import CodebookUsage
from evatok.models.config import TokenizerConfig
from evatok.models.discriminators import TransformerPatchGAN
from evatok.models.tokenizer import Tokenizer
from evatok.training.alignment import AlignedTokenizer, VJEPA2Alignment
from evatok.training.recipe import LossOutput, Recipe, StepContext
from evatok.video.clips import ClipSpec
from evatok.video.datasets import ClipDataset, VideoEntry, list_videos, read_manifest, split_by_file

logger = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".csv", ".tsv")


def tokenizer_config_of(config: DictConfig) -> TokenizerConfig:
    """Return the typed tokenizer config of a run config."""
    if not config.get("tokenizer"):
        raise ValueError("the config has no `tokenizer:` section: use a preset such as --config tiny")
    return TokenizerConfig.from_dict(OmegaConf.to_container(config.tokenizer, resolve=True))


def clip_spec_of(config: DictConfig, tokenizer: TokenizerConfig, *, training: bool) -> ClipSpec:
    """Return the clip geometry the tokenizer takes, with a random crop only for training."""
    data = config.data
    return ClipSpec(
        num_frames=tokenizer.frames,
        height=tokenizer.height,
        width=tokenizer.width,
        frame_stride=data.frame_stride,
        fps=data.fps,
        short_policy="pad",
        crop="random" if training and data.random_crop else "center",
    )


def video_entries(videos: str | Path) -> tuple[list[VideoEntry], Path]:
    """List the videos of a folder (recursively) or a CSV/TSV manifest, with the root for split keys."""
    path = Path(videos)
    if path.is_dir():
        return [VideoEntry(p) for p in list_videos(path)], path
    if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        return read_manifest(path), path.parent
    raise FileNotFoundError(
        f"data.videos={str(videos)!r} is neither a folder nor a .csv/.tsv manifest: set data.videos "
        "to a folder of videos or a manifest file"
    )


def split_entries(config: DictConfig) -> tuple[list[VideoEntry], list[VideoEntry]]:
    """Return the (training, held-out) videos of `data.videos`, split by a stable hash of each file."""
    if config.data.videos is None:
        raise ValueError("data.videos is not set: pass data.videos=DIR (a folder or a manifest)")
    entries, root = video_entries(config.data.videos)
    if not entries:
        raise FileNotFoundError(f"no videos found under data.videos={config.data.videos}")
    by_path = {entry.path: entry for entry in entries}
    paths = [e.path for e in entries]
    # Split keys are paths relative to the folder or manifest. A manifest may also list files
    # elsewhere, and then the keys are the bare file names.
    if not all(p.is_relative_to(root) for p in paths):
        root = None
    train, held_out = split_by_file(paths, config.data.held_out_fraction, seed=config.data.split_seed, root=root)
    return [by_path[p] for p in train], [by_path[p] for p in held_out]


class ProxyRecipe(Recipe):
    """Train the Q-Former tokenizer on real clips with a random assignment per sample."""

    def __init__(self, config: DictConfig) -> None:
        super().__init__(config)
        self.tokenizer_config = tokenizer_config_of(config)
        self.space = self.tokenizer_config.space
        self.count_probabilities = self._count_probabilities(config.train.assignment_weights)
        window = config.run.log_every * config.train.grad_accum_steps
        self.usage = CodebookUsage(self.tokenizer_config.codebook_size, window=window)
        self.perceptual: PerceptualLoss | None = None
        self.alignment: VJEPA2Alignment | None = None
        self.restarted_codes = 0
        if config.loss.semantic_disc and config.loss.lecam_weight > 0:
            logger.info("loss.lecam_weight applies to the PatchGAN only; the semantic discriminator runs without LeCam")

    def _count_probabilities(self, weights: list[float] | None) -> torch.Tensor:
        """Return the probability of each candidate count from the configured weights."""
        candidates = self.space.candidates
        if weights is None:
            return torch.full((len(candidates),), 1.0 / len(candidates))
        values = torch.tensor(list(weights), dtype=torch.float64)
        if values.numel() != len(candidates) or bool((values < 0).any()) or float(values.sum()) <= 0:
            raise ValueError(
                f"invalid train.assignment_weights {list(weights)}: give {len(candidates)} non-negative "
                f"weights, one per candidate count {list(candidates)}, with a positive sum"
            )
        return (values / values.sum()).float()

    # ----- models and data -----

    def build_model(self) -> nn.Module:
        model = Tokenizer(self.tokenizer_config)
        logger.info("tokenizer: %.2fM parameters", model.num_parameters() / 1e6)
        loss = self.config.loss
        if loss.alignment_weight <= 0:
            return model
        # Loading fails with a message that names the model id when the weights are missing.
        self.alignment = VJEPA2Alignment.from_pretrained(loss.alignment_encoder, loss.alignment_encoder_layer)
        aligned = AlignedTokenizer(model, loss.alignment_decoder_layer, self.alignment.width)
        logger.info(
            "alignment to %s (hidden_states[%d]) from decoder layer %d, weight %g",
            loss.alignment_encoder, loss.alignment_encoder_layer, aligned.decoder_layer, loss.alignment_weight,
        )
        return aligned

    def build_discriminator(self) -> nn.Module | None:
        loss = self.config.loss
        if loss.adversarial_weight <= 0:
            return None
        if loss.semantic_disc:
            from evatok.models.semantic_disc import SemanticDiscriminator

            logger.info("semantic discriminator on %s layers %s", loss.semantic_disc_encoder, list(loss.semantic_disc_layers))
            return SemanticDiscriminator.from_pretrained(
                list(loss.semantic_disc_layers), loss.semantic_disc_encoder, loss.semantic_disc_head_width
            )
        tok = self.tokenizer_config
        return TransformerPatchGAN(
            tok.frames, tok.height, tok.width,
            patch_size=list(loss.disc_patch_size),
            channels=tok.channels,
            model_width=loss.disc_width,
            depth=loss.disc_depth,
            heads=loss.disc_heads,
        )

    def discriminator_active(self, step: int) -> bool:
        return self.config.loss.adversarial_weight > 0 and step >= self.config.loss.disc_start_step

    def build_dataset(self) -> Dataset:
        train_entries, held_out = split_entries(self.config)
        data = self.config.data
        dataset = ClipDataset(
            train_entries,
            clip_spec_of(self.config, self.tokenizer_config, training=True),
            max_bad_fraction=data.max_bad_fraction,
            max_clips_per_video=data.max_clips_per_video,
            cache_dir=data.cache_dir,
            seed=self.config.train.seed,
        )
        logger.info(
            "training on %d clips from %d videos (%d held out, %d unreadable, %d too short)",
            len(dataset), len(train_entries), len(held_out), len(dataset.bad_files), len(dataset.skipped_short),
        )
        return dataset

    # ----- losses -----

    def assignments_for(self, video: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """Return each sample's token counts (batch, blocks): random ones for the proxy."""
        return self.draw_assignments(video.shape[0], ctx.generator)

    def draw_assignments(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Return a (batch, blocks) tensor of token counts, each block drawn independently."""
        choices = torch.multinomial(
            self.count_probabilities.expand(batch_size * self.space.num_blocks, -1), 1,
            replacement=True, generator=generator,
        ).view(batch_size, self.space.num_blocks)
        return torch.tensor(self.space.candidates)[choices]

    def _perceptual(self, device: torch.device) -> PerceptualLoss:
        """Build the LPIPS loss on first use (its weights load from the local cache)."""
        if self.perceptual is None:
            from evatok.models.pretrained import load_network

            network = load_network(f"lpips-{self.config.loss.perceptual_net}")
            self.perceptual = PerceptualLoss(network, frames=self.config.loss.perceptual_frames).to(device)
        return self.perceptual

    def training_loss(self, model: nn.Module, batch: dict[str, Any], ctx: StepContext) -> LossOutput:
        loss = self.config.loss
        video: torch.Tensor = batch["video"]
        frame_mask: torch.Tensor = batch["mask"]
        if self.config.data.horizontal_flip:
            flip = torch.rand(video.shape[0], generator=ctx.generator) < 0.5
            video = torch.where(flip.to(video.device)[:, None, None, None, None], video.flip(-1), video)
        counts = self.assignments_for(video, ctx).to(video.device)

        # The quantizer computes its codebook, commitment and entropy terms in float32 inside the
        # tokenizer's forward, also under bf16/fp16 autocast.
        projected = None
        if self.alignment is not None:
            output, projected = model(video, counts, with_entropy=loss.entropy_weight > 0)
        else:
            output = model(video, counts, with_entropy=loss.entropy_weight > 0)
        reconstruction = output.reconstruction
        terms: dict[str, torch.Tensor] = {}

        l1 = masked_l1(reconstruction, video, frame_mask)
        terms["l1"] = l1.detach()
        reconstruction_loss = loss.l1_weight * l1
        if loss.perceptual_weight > 0:
            lpips = self._perceptual(video.device)(reconstruction, video, frame_mask)
            terms["lpips"] = lpips.detach()
            reconstruction_loss = reconstruction_loss + loss.perceptual_weight * lpips

        total = (
            reconstruction_loss
            + loss.codebook_weight * output.quantizer_loss.float()
            + loss.entropy_weight * output.entropy_loss.float()
        )
        terms["vq"] = output.quantizer_loss.detach()
        terms["entropy"] = output.entropy_loss.detach()
        terms["perplexity"] = output.perplexity.detach().float()
        terms["tokens_per_clip"] = torch.tensor(output.num_tokens / video.shape[0])

        if self.alignment is not None:
            unwrapped = ctx.accelerator.unwrap_model(model)
            alignment = self.alignment.to(video.device)(video, projected, unwrapped.feature_grid)
            total = total + loss.alignment_weight * alignment
            terms["align"] = alignment.detach()

        if ctx.discriminator is not None and self.discriminator_active(ctx.step):
            fake_logits = frozen_forward(ctx.discriminator, reconstruction)
            adversarial = mean_over_heads(fake_logits, lambda logits: generator_adversarial_loss(logits, loss.adversarial_loss))
            weight = torch.ones((), device=video.device)
            if loss.adaptive_weight:
                last_layer = ctx.accelerator.unwrap_model(model).head.weight
                weight = adaptive_adversarial_weight(
                    reconstruction_loss, adversarial, last_layer, loss.adaptive_weight_max
                )
            total = total + loss.adversarial_weight * weight * adversarial
            terms["adv"] = adversarial.detach()
            terms["adv_weight"] = weight

        valid_ids = torch.cat([block.ids[block.valid] for block in output.encoding.blocks])
        self.usage.update(valid_ids)
        cache = {"real": video.detach(), "fake": reconstruction.detach()}
        return LossOutput(loss=total, terms=terms, cache=cache)

    def discriminator_loss(
        self, discriminator: nn.Module, batch: dict[str, Any], cache: dict[str, Any], ctx: StepContext
    ) -> LossOutput:
        loss = self.config.loss
        real, fake = cache["real"], cache["fake"]
        # One forward over real and fake together: DDP expects one forward per backward.
        logits = discriminator(torch.cat([real, fake.to(real.dtype)]))
        if isinstance(logits, (list, tuple)):
            # The semantic discriminator returns one logits tensor per VideoMAE layer; the heads
            # weigh equally.
            heads = [(head[: real.shape[0]], head[real.shape[0] :]) for head in logits]
            total = torch.stack([discriminator_loss(r, f, loss.adversarial_loss) for r, f in heads]).mean()
            terms = {
                "real_logit": torch.stack([r.detach().float().mean() for r, _ in heads]).mean(),
                "fake_logit": torch.stack([f.detach().float().mean() for _, f in heads]).mean(),
            }
            return LossOutput(loss=total, terms=terms)
        real_logits, fake_logits = logits[: real.shape[0]], logits[real.shape[0] :]
        total = discriminator_loss(real_logits, fake_logits, loss.adversarial_loss)
        terms = {
            "real_logit": real_logits.detach().float().mean(),
            "fake_logit": fake_logits.detach().float().mean(),
        }
        if loss.lecam_weight > 0:
            module = ctx.accelerator.unwrap_model(discriminator)
            lecam = lecam_regularization(real_logits, fake_logits, module.lecam_real_ema, module.lecam_fake_ema)
            module.update_lecam_ema(real_logits, fake_logits, loss.lecam_decay)
            total = total + loss.lecam_weight * lecam
            terms["lecam"] = lecam.detach()
        return LossOutput(loss=total, terms=terms)

    # ----- after the step -----

    def after_optimizer_step(self, model: nn.Module, ctx: StepContext) -> None:
        """Restart dead codes, keeping the codebook identical on every process."""
        restarted = model.restart_dead_codes()
        if dist.is_available() and dist.is_initialized():
            # Each process restarts from its own encoder outputs; process 0's codebook wins so the
            # replicas stay equal (DDP synchronises gradients, not parameters).
            dist.broadcast(model.quantizer.codebook.data, src=0)
        self.restarted_codes += restarted

    def interval_stats(self, accelerator: Any) -> dict[str, float]:
        stats = {
            "codebook_usage": self.usage.usage(),
            "codebook_used_codes": float(self.usage.used_codes()),
            "codebook_perplexity": self.usage.perplexity(),
            "codebook_restarted": float(self.restarted_codes),
        }
        self.restarted_codes = 0
        return stats

    def save_final(self, model: nn.Module, ema_model: nn.Module | None, directory: Path) -> None:
        """Write the EMA tokenizer (or the raw one without EMA) with save_pretrained, config inside.

        The alignment projector is a training aid and is left out.
        """
        as_tokenizer = [m.tokenizer if isinstance(m, AlignedTokenizer) else m for m in (model, ema_model)]
        (as_tokenizer[1] or as_tokenizer[0]).save_pretrained(directory)
        if ema_model is not None:
            as_tokenizer[0].save_pretrained(directory / "raw")


def mean_over_heads(logits: torch.Tensor | list[torch.Tensor], loss_of: Any) -> torch.Tensor:
    """Return `loss_of(logits)`, averaged over the heads when the discriminator returns a list."""
    if isinstance(logits, (list, tuple)):
        return torch.stack([loss_of(head) for head in logits]).mean()
    return loss_of(logits)
