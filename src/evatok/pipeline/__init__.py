"""`evatok pipeline`: proxy, search, router, final tokenizer, baseline, evaluation and report in one run folder."""

from evatok.pipeline.runner import run_pipeline, stage_table
from evatok.pipeline.state import STAGES, PipelineState

__all__ = ["STAGES", "PipelineState", "run_pipeline", "stage_table"]
