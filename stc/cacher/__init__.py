"""STC-Cacher: selective recompute of pre-LayerNorm transformer blocks against a reference frame.

`stc.cacher.plan` decides which frames are references and which tokens are recomputed;
`stc.cacher.blocks` runs the reference, selective and mixed blocks (eager or compiled). Pure
tensor code: no transformers import. Spec: ../shared/docs/stc-algorithm.md ("STC-Cacher").
"""

from stc.cacher.blocks import (
    BlockOps,
    BlockReference,
    SegmentAttention,
    compiled_blocks,
    mixed_block,
    reference_block,
    run_block,
    selective_block,
)
from stc.cacher.gating import RecomputeGate
from stc.cacher.plan import (
    CUT_SAMPLE_STRIDE,
    FramePlan,
    SegmentSelection,
    StreamCache,
    grouped,
    key_similarity,
    lowest_similarity,
    num_recomputed,
    plan_frames,
    segment_quotas,
    unit_keys,
)

__all__ = [
    "BlockOps", "BlockReference", "CUT_SAMPLE_STRIDE", "FramePlan", "RecomputeGate", "SegmentAttention", "SegmentSelection",
    "StreamCache", "compiled_blocks", "grouped", "key_similarity", "lowest_similarity", "mixed_block",
    "num_recomputed", "plan_frames", "reference_block", "run_block", "segment_quotas", "selective_block",
    "unit_keys",
]
