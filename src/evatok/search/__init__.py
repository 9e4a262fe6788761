"""Stage 2: the proxy reward, the assignment search strategies and the resumable label store."""

from evatok.search.reward import (
    DEFAULT_W_Q,
    Reward,
    RewardStats,
    reward_percentile,
    stats_from_samples,
)
from evatok.search.scoring import ClipScorer
from evatok.search.store import ClipLabels, LabelStore
from evatok.search.strategies import (
    STRATEGIES,
    SearchResult,
    beam_search,
    exhaustive_search,
    expected_block_evaluations,
    prefix_search,
    run_strategy,
)

__all__ = [
    "DEFAULT_W_Q",
    "STRATEGIES",
    "ClipLabels",
    "ClipScorer",
    "LabelStore",
    "Reward",
    "RewardStats",
    "SearchResult",
    "beam_search",
    "exhaustive_search",
    "expected_block_evaluations",
    "prefix_search",
    "reward_percentile",
    "run_strategy",
    "stats_from_samples",
]
