"""Named training recipes of the testbed: a `TrainConfig` and a `TestbedArchitecture` each.
`stc testbed train --recipe NAME` starts from one and any flag overrides a field.

- v2: today's defaults (the v2 run of docs/testbed.md; generator 2, the shipped benchmark).
- v3: the issue-33 recipe for the v3 generator (docs/testbed.md, "v3 training recipe").
"""

from __future__ import annotations

from stc.eval.testbed.model import TestbedArchitecture
from stc.eval.testbed.token_drop import NEUTRAL_PATTERNS
from stc.eval.testbed.train import TrainConfig

RECIPES: dict[str, tuple[TrainConfig, TestbedArchitecture]] = {
    "v2": (TrainConfig(), TestbedArchitecture()),
    "v3": (TrainConfig(
        generator=3,
        # warmup-stable-decay: the peak until the last 20% of each optimiser phase, then down to 2%
        schedule="wsd", decay_share=0.2, min_lr_share=0.02,
        # drop patterns that are no compared selector's rule, and more dense samples than v2's quarter
        drop_patterns=NEUTRAL_PATTERNS, dense_share=0.3,
        # validation on 60 episodes (605 questions), by the benchmark's letter rule
        validation_episodes=60, validate_every=400,
        # about 140 minutes at the pilot's CPU seconds a step (docs/testbed.md, "v3 training recipe")
        vision_steps=1500, lookup_steps=200, perception_steps=250, short_steps=300, long_steps=600),
        # 6 x 6 = 36 LLM tokens a frame (issue 33: >= 36), 144 ViT patches: v2's 8 x 8 (256 patches)
        # made every step dearer and left too few training episodes within the budget
        TestbedArchitecture.with_grid(6)),
}
DEFAULT_RECIPE = "v2"

__all__ = ["DEFAULT_RECIPE", "RECIPES"]
