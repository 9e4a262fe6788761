"""The class-conditional autoregressive generator: a Llama-style decoder-only transformer.

Each layer is pre-norm: RMSNorm, causal multi-head self-attention with rotary position embeddings
(RoPE) on queries and keys, then RMSNorm and a SwiGLU MLP; no linear layer has a bias. The token
embedding and the output head are separate matrices. The vocabulary (codes, length tokens,
classes, null class, pad) is ``evatok.generation.vocab.GenerationVocab``.

EVATok (Xiong et al., CVPR 2026) names three sizes, 99M, 327M and 633M parameters, but not their
shapes. The presets here choose Llama-style shapes that reach those counts (within 1%) with the
paper's vocabulary: 16384 codes, candidates (32, 64, 128, 256, 512), 4 blocks and the 101 classes
of UCF-101. Attention runs through ``F.scaled_dot_product_attention``; sampling keeps a
``KVCache`` of earlier keys and values.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

from evatok.generation.vocab import GenerationVocab
from evatok.models.weights import WEIGHTS_NAME, ConfigInWeightsMixin

# Architecture presets; the vocabulary fields come from the token export at training time.
GENERATOR_PRESETS: dict[str, dict[str, Any]] = {
    # Unit tests: a few thousand parameters.
    "micro": {"width": 32, "depth": 2, "heads": 2, "mlp_hidden": 64},
    # CPU experiments: 4.3M parameters with the tiny tokenizer (2048 codes) and 10 classes.
    "tiny": {"width": 256, "depth": 4, "heads": 4, "mlp_hidden": 704},
    # The paper's sizes, counted with its vocabulary (see the module docstring).
    "gpt-b": {"width": 768, "depth": 12, "heads": 12, "mlp_hidden": 1664},
    "327m": {"width": 1024, "depth": 24, "heads": 16, "mlp_hidden": 2624},
    "633m": {"width": 1280, "depth": 30, "heads": 20, "mlp_hidden": 3392},
}


@dataclass
class GeneratorConfig:
    """Vocabulary and transformer sizes of a generator, stored inside its weights file."""

    codebook_size: int = 16384
    candidates: tuple[int, ...] = (32, 64, 128, 256, 512)
    num_blocks: int = 4
    num_classes: int = 101
    # Class names in class-index order; empty when unknown. `evatok generate --class` reads them.
    class_names: tuple[str, ...] = ()
    width: int = 768
    depth: int = 12
    heads: int = 12
    # SwiGLU hidden size; None uses 8/3 x width rounded up to a multiple of 64 (Llama's rule).
    mlp_hidden: int | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    dropout: float = 0.0
    init_std: float = 0.02

    def __post_init__(self) -> None:
        self.candidates = tuple(int(count) for count in self.candidates)
        self.class_names = tuple(str(name) for name in self.class_names)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field whose value cannot build a generator."""
        for name in ("codebook_size", "num_blocks", "num_classes", "width", "depth", "heads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"generator config {name}={getattr(self, name)} must be at least 1")
        if self.width % self.heads or (self.width // self.heads) % 2:
            raise ValueError(
                f"generator config width={self.width} with heads={self.heads} gives a head size that is "
                "not an even integer: rotary embeddings rotate pairs of channels; change width or heads"
            )
        if self.mlp_hidden is not None and self.mlp_hidden < 1:
            raise ValueError(f"generator config mlp_hidden={self.mlp_hidden} must be at least 1 or null")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"generator config has {len(self.class_names)} class_names but num_classes={self.num_classes}: "
                "give one name per class or none"
            )
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"generator config class_names {list(self.class_names)} repeat a name: names must be unique")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"generator config dropout={self.dropout} must lie in [0, 1)")
        if self.rope_base <= 1.0:
            raise ValueError(f"generator config rope_base={self.rope_base} must be above 1")
        self.vocab  # noqa: B018  # builds the vocabulary, which validates candidates and counts

    @property
    def vocab(self) -> GenerationVocab:
        """The token vocabulary of this generator."""
        return GenerationVocab(self.codebook_size, self.candidates, self.num_blocks, self.num_classes)

    @property
    def head_dim(self) -> int:
        """Channels per attention head."""
        return self.width // self.heads

    @property
    def hidden(self) -> int:
        """SwiGLU hidden size, with the default resolved."""
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        return 64 * math.ceil(8 * self.width / 3 / 64)

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a JSON-ready dict."""
        data = asdict(self)
        data["candidates"] = list(self.candidates)
        data["class_names"] = list(self.class_names)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeneratorConfig:
        """Build a config from a dict, rejecting unknown keys by name."""
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown generator config keys {unknown}: valid keys are {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> GeneratorConfig:
        """Build the config of a named preset with some fields replaced."""
        if name not in GENERATOR_PRESETS:
            raise ValueError(f"unknown generator preset {name!r}: choose one of {sorted(GENERATOR_PRESETS)}")
        return cls.from_dict({**GENERATOR_PRESETS[name], **overrides})


# ----- layers ------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """Root-mean-square normalisation with a learned gain and no bias."""

    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: Tensor) -> Tensor:
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


def rotary_tables(length: int, head_dim: int, base: float) -> tuple[Tensor, Tensor]:
    """Return cos and sin tables (length, head_dim / 2) of rotary position embeddings."""
    frequencies = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.arange(length, dtype=torch.float32)[:, None] * frequencies[None, :]
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (first half, second half) of x (B, H, S, D) by the position angles."""
    first, second = x.float().chunk(2, dim=-1)
    rotated = torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)
    return rotated.to(x.dtype)


class KVCache:
    """Keys and values of earlier positions for every layer, preallocated to a maximum length."""

    def __init__(
        self, depth: int, batch: int, heads: int, max_length: int, head_dim: int,
        device: torch.device, dtype: torch.dtype,
    ) -> None:
        shape = (batch, heads, max_length, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(depth)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(depth)]
        self.max_length = max_length
        self.length = 0

    def store(self, layer: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Write new keys and values at the current length; return all keys and values so far."""
        end = self.length + keys.shape[2]
        self.keys[layer][:, :, self.length : end] = keys
        self.values[layer][:, :, self.length : end] = values
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class Attention(nn.Module):
    """Causal multi-head self-attention with rotary positions and an optional KV cache."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.width, 3 * config.width, bias=False)
        self.out = nn.Linear(config.width, config.width, bias=False)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None, layer: int
    ) -> Tensor:
        batch, length, width = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        queries = apply_rotary(qkv[0], cos, sin)
        keys = apply_rotary(qkv[1], cos, sin)
        values = qkv[2]
        past = 0
        if cache is not None:
            past = cache.length
            keys, values = cache.store(layer, keys, values)
        mask = None
        causal = False
        if past == 0:
            causal = length > 1
        elif length > 1:
            # New positions see every cached position and the new ones up to themselves.
            total = past + length
            mask = torch.ones(length, total, dtype=torch.bool, device=x.device).tril(diagonal=past)
        attended = F.scaled_dot_product_attention(
            queries, keys, values, attn_mask=mask, is_causal=causal,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out(attended.transpose(1, 2).reshape(batch, length, width))


class SwiGLU(nn.Module):
    """The gated MLP of Llama: down(silu(gate(x)) * up(x))."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(width, hidden, bias=False)
        self.up = nn.Linear(width, hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class DecoderLayer(nn.Module):
    """One pre-norm transformer layer: attention and SwiGLU, each with a residual connection."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(config.width, config.norm_eps)
        self.attention = Attention(config)
        self.mlp_norm = RMSNorm(config.width, config.norm_eps)
        self.mlp = SwiGLU(config.width, config.hidden)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None, layer: int) -> Tensor:
        x = x + self.dropout(self.attention(self.attention_norm(x), cos, sin, cache, layer))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


# ----- the model ---------------------------------------------------------------------------------


class Generator(nn.Module, ConfigInWeightsMixin, PyTorchModelHubMixin, library_name="evatok"):
    """Next-token logits (B, S, vocab size) for token sequences (B, S) of the generation vocabulary."""

    config_class = GeneratorConfig
    config_metadata_key = "evatok_generator_config"

    def __init__(self, config: GeneratorConfig | dict | None = None) -> None:
        super().__init__()
        if config is None:
            config = GeneratorConfig()
        elif isinstance(config, dict):
            config = GeneratorConfig.from_dict(config)
        self.config = config
        self.vocab = config.vocab
        self.embed = nn.Embedding(self.vocab.size, config.width)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.depth))
        self.norm = RMSNorm(config.width, config.norm_eps)
        self.head = nn.Linear(config.width, self.vocab.size, bias=False)
        cos, sin = rotary_tables(self.vocab.max_sequence_length, config.head_dim, config.rope_base)
        # Not persistent: the tables follow from the config, so the weights file leaves them out.
        self.register_buffer("rotary_cos", cos, persistent=False)
        self.register_buffer("rotary_sin", sin, persistent=False)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.init_std)

    def new_cache(self, batch: int, max_length: int | None = None) -> KVCache:
        """Return an empty KV cache for ``batch`` rows on the model's device and dtype."""
        config = self.config
        parameter = self.head.weight
        return KVCache(
            config.depth, batch, config.heads, max_length or self.vocab.max_sequence_length,
            config.head_dim, parameter.device, parameter.dtype,
        )

    def forward(self, tokens: Tensor, cache: KVCache | None = None) -> Tensor:
        """Return logits (B, S, vocab size); with ``cache``, ``tokens`` continue the cached ones."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens have shape {tuple(tokens.shape)}, expected (batch, length)")
        start = cache.length if cache is not None else 0
        end = start + tokens.shape[1]
        limit = cache.max_length if cache is not None else self.vocab.max_sequence_length
        if end > min(limit, self.rotary_cos.shape[0]):
            raise ValueError(
                f"positions up to {end} exceed the maximum sequence length {min(limit, self.rotary_cos.shape[0])} "
                "of this generator or its cache"
            )
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab.size):
            raise ValueError(f"tokens contain ids outside the vocabulary [0, {self.vocab.size - 1}]")
        cos = self.rotary_cos[start:end]
        sin = self.rotary_sin[start:end]
        hidden = self.embed(tokens)
        for index, layer in enumerate(self.layers):
            hidden = layer(hidden, cos, sin, cache, index)
        if cache is not None:
            cache.length = end
        return self.head(self.norm(hidden))

    def num_parameters(self) -> int:
        """Return the number of parameters."""
        return sum(parameter.numel() for parameter in self.parameters())

    @classmethod
    def load(cls, location: str | Path, device: str = "cpu") -> Generator:
        """Load a generator from a safetensors file, a folder holding one, or a training run folder."""
        location = Path(location)
        for candidate in (location, location / WEIGHTS_NAME, location / "final" / WEIGHTS_NAME):
            if candidate.is_file():
                return cls.from_safetensors(candidate, device=device).eval()
        raise FileNotFoundError(
            f"no generator weights at {location}: give {WEIGHTS_NAME}, a folder with it, or a run folder "
            f"of `evatok train generator` (which writes final/{WEIGHTS_NAME})"
        )
