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
    # 6 x 6 = 36 LLM tokens a frame (issue 33: >= 36), 144 ViT patches: v2's 8 x 8 (256 patches) made
    # every step about 4x v1's and left too few training episodes within the budget
    # drop patterns that are no compared selector's rule, and more dense samples than v2's quarter;
    # validation on 60 episodes (about 600 questions), by the benchmark's letter rule
    "v3": (TrainConfig(generator=3, schedule="wsd", decay_share=0.2, min_lr_share=0.02, drop_patterns=NEUTRAL_PATTERNS,
                       dense_share=0.3, validation_episodes=60),
           TestbedArchitecture.with_grid(6)),
}
DEFAULT_RECIPE = "v2"

__all__ = ["DEFAULT_RECIPE", "RECIPES"]
