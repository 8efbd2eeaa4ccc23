"""Named training recipes of the testbed: a `TrainConfig` and a `TestbedArchitecture` each.
`stc testbed train --recipe NAME` starts from one and any flag overrides a field.

- v2: today's defaults (the v2 run of docs/testbed.md; generator 2, the shipped benchmark).
- v3: the issue-33 recipe for the v3 generator (docs/testbed.md, "v3 training recipe").
"""

from __future__ import annotations

from stc.eval.testbed.model import TestbedArchitecture
from stc.eval.testbed.train import TrainConfig

RECIPES: dict[str, tuple[TrainConfig, TestbedArchitecture]] = {
    "v2": (TrainConfig(), TestbedArchitecture()),
    "v3": (TrainConfig(generator=3), TestbedArchitecture()),
}
DEFAULT_RECIPE = "v2"

__all__ = ["DEFAULT_RECIPE", "RECIPES"]
