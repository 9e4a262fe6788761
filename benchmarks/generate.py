"""Measure generator sampling speed: tokens/s with and without the KV cache, and time per clip.

The generator has random weights, because speed depends on sequence lengths and not on training.
To fix each clip's length, a logits hook forces a planned sequence token by token through the
full sampling path (guidance, grammar mask, top-k filter, draw). Adaptive plans cycle through
the assignments of a token export (``--tokens``), or are drawn uniformly from the assignment space
without one. Uniform plans give every block the same count. Prints Markdown tables.

    python benchmarks/generate.py --preset tiny --tokenizer-preset tiny --threads 2 \\
        [--tokens EXPORT] [--uniform 8] [--batch-size 8] [--clips 32] [--cfg 1.75]
"""

from __future__ import annotations

import argparse
import platform
import random
import time
from collections.abc import Sequence

import torch

from evatok.generation.sampling import SamplingSettings, sample_sequences
from evatok.generation.vocab import GenerationVocab
from evatok.models.generator import Generator, GeneratorConfig
from evatok.presets import tokenizer_config


def planned_sequences(vocab: GenerationVocab, assignments: Sequence[tuple[int, ...]], seed: int) -> list[torch.Tensor]:
    """Return one valid sequence per assignment with random codes and classes."""
    generator = torch.Generator().manual_seed(seed)
    sequences = []
    for assignment in assignments:
        blocks = [torch.randint(0, vocab.codebook_size, (count,), generator=generator) for count in assignment]
        class_index = int(torch.randint(0, vocab.num_classes, (1,), generator=generator))
        sequences.append(vocab.encode(class_index, assignment, blocks))
    return sequences


def forcing_hook(vocab: GenerationVocab, sequences: list[torch.Tensor]):
    """Return a logits hook that makes step n pick token n + 1 of each planned sequence."""
    width = max(sequence.numel() for sequence in sequences)
    plan = torch.full((len(sequences), width), vocab.pad_id, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        plan[row, : sequence.numel()] = sequence
    state = {"step": 0}

    def hook(logits: torch.Tensor) -> torch.Tensor:
        state["step"] += 1
        targets = plan[:, min(state["step"], width - 1)].to(logits.device)
        return logits.scatter(1, targets[:, None], 1e3)

    return hook


def time_batch(
    model: Generator, vocab: GenerationVocab, assignments: list[tuple[int, ...]], settings: SamplingSettings,
    repeats: int, seed: int,
) -> tuple[float, int]:
    """Return the best wall time of ``repeats`` runs sampling one batch, and its generated tokens."""
    sequences = planned_sequences(vocab, assignments, seed)
    classes = [int(sequence[0]) - vocab.first_class_id for sequence in sequences]
    best = float("inf")
    for _ in range(repeats):
        hook = forcing_hook(vocab, sequences)
        started = time.perf_counter()
        output = sample_sequences(model, classes, settings, generator=torch.Generator().manual_seed(seed), logits_hook=hook)
        best = min(best, time.perf_counter() - started)
        for row, sequence in enumerate(sequences):
            assert torch.equal(output[row, : sequence.numel()], sequence), "the forcing hook lost a token"
    # Generated tokens: everything after the class token, length tokens included.
    return best, sum(sequence.numel() - 1 for sequence in sequences)


def export_assignments(path: str) -> list[tuple[int, ...]]:
    """Return the assignments of a token export, in clip-key order."""
    from evatok.export import TokenStore

    return [tuple(int(count) for count in row) for row in TokenStore(path).read()["assignment"]]


def main() -> int:
    """Build a random generator and print cache and adaptive-versus-uniform timing tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="generator architecture preset (default tiny)")
    parser.add_argument("--tokenizer-preset", default="tiny", help="tokenizer preset for codes and counts (default tiny)")
    parser.add_argument("--classes", type=int, default=10, help="number of classes (default 10)")
    parser.add_argument("--tokens", default=None, help="token export whose assignments the adaptive plans cycle through")
    parser.add_argument("--uniform", type=int, default=None, help="uniform count per block (default: largest candidate)")
    parser.add_argument("--batch-size", type=int, default=8, help="clips sampled at once (default 8)")
    parser.add_argument("--clips", type=int, default=32, help="clips timed per plan, in batches (default 32)")
    parser.add_argument("--cfg", type=float, default=1.75, help="guidance scale; 1 skips the null rows (default 1.75)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the fastest counts (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer = tokenizer_config(args.tokenizer_preset)
    config = GeneratorConfig.from_preset(
        args.preset, codebook_size=tokenizer.codebook_size, candidates=tokenizer.candidates,
        num_blocks=tokenizer.num_blocks, num_classes=args.classes,
    )
    model = Generator(config).eval().to(args.device)
    vocab = model.vocab
    space = vocab.space
    if args.tokens is not None:
        pool = export_assignments(args.tokens)
        source = f"assignments of {args.tokens}"
    else:
        rng = random.Random(0)
        pool = [space.sample(rng) for _ in range(args.clips)]
        source = "assignments drawn uniformly from the space"
    adaptive = [pool[index % len(pool)] for index in range(args.clips)]
    uniform_count = args.uniform or tokenizer.candidates[-1]
    uniform = [space.uniform(uniform_count)] * args.clips

    print(f"generator preset {args.preset}: {model.num_parameters() / 1e6:.2f}M parameters, vocabulary {vocab.size}, "
          f"batch {args.batch_size}, cfg {args.cfg:g}, top-k 50, {args.threads} threads on {args.device} "
          f"({platform.processor() or platform.machine()}), best of {args.repeats}")
    print(f"adaptive plans: {source}; uniform plans: {uniform_count} tokens per block\n")

    print("| sequences | KV cache | tokens/s | speed-up |")
    print("|---|---|---|---|")
    rates = {}
    for use_cache in (False, True):
        settings = SamplingSettings(top_k=50, cfg_scale=args.cfg, use_cache=use_cache)
        seconds, tokens = time_batch(model, vocab, uniform[: args.batch_size], settings, args.repeats, seed=1)
        rates[use_cache] = tokens / seconds
        speedup = "" if not use_cache else f"{rates[True] / rates[False]:.2f}x"
        print(f"| uniform {uniform_count} per block | {'yes' if use_cache else 'no'} | {rates[use_cache]:.0f} | {speedup} |")

    # A batch runs until its longest sequence ends, so adaptive batches cost their longest clip.
    print(f"\n{args.clips} clips per plan in batches of {args.batch_size}:\n")
    print("| sequences | mean code tokens per clip | seconds per clip | relative time |")
    print("|---|---|---|---|")
    settings = SamplingSettings(top_k=50, cfg_scale=args.cfg)
    times = {}
    for name, assignments in (("uniform", uniform), ("adaptive", adaptive)):
        seconds = 0.0
        for start in range(0, len(assignments), args.batch_size):
            batch = assignments[start : start + args.batch_size]
            seconds += time_batch(model, vocab, batch, settings, args.repeats, seed=2 + start)[0]
        times[name] = seconds / len(assignments)
        mean_tokens = sum(map(sum, assignments)) / len(assignments)
        relative = times[name] / times["uniform"]
        print(f"| {name} | {mean_tokens:.1f} | {times[name]:.4f} | {relative:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
