"""Peer methods: token reducers of other papers, re-implemented behind STC's two plug-in points.

Pure tensor code (no transformers import). A peer method is selected by name with a
`MethodConfig` (its knobs are validated there) and plugs in where STC's parts do:

- post-encoder selector (where STC-Pruner sits): one `Selector` per stream receives the stream's
  frames' tokens [F, n, D] in time order, plus a `FrameContext` for rules that read more than the
  tokens, and returns a `Selection`: per frame, the kept original positions (ascending) and the
  tokens the LLM gets (a gather, or, for merging rules, merged vectors placed at the position of a
  representative kept token). Per-frame counts may differ.
- ViT-side reducer (where STC-Cacher sits): `TokenMerging`, ToMe inside the vision encoder; the
  model adapter runs the encoder layers and calls it.

All selectors are causal: frame t's selection reads frames <= t of its stream only (history is
carried between calls in the selector) unless an option says otherwise (VidCom2's "chunk"
allocation). Budget mode is the default everywhere: k = round(n * keep_ratio) tokens per frame
(at least 1), so methods compare at equal LLM budgets; where a paper uses a threshold or a fixed
split instead, that mode is an option, and budget mode is listed as an adaptation.

The `oracle` is no method but a reference ceiling: it reads the scene's ground truth (which cells
objects cover) through the `ground_truth` hook, which only `stc eval synthetic` sets.

Modules: `base` (the interface), `rules` (per-frame rules the methods share), `baselines`
(uniform, random, the oracle and its `ground_truth` hook), `temporal` (TimeChat-Online, EVS,
DyCoke), `vidcom2`, `visionzip`, `tome` (ToMe's kernels, `TokenMerging`, its selector),
`registry` (PEER_METHODS, the one table of names) and `config` (`MethodConfig`).
"""

from stc.peers.base import FrameContext, FrameSelector, Option, Selection, Selector
from stc.peers.baselines import ObjectCells, OracleSelector, RandomSelector, UniformSelector, ground_truth
from stc.peers.config import MethodConfig
from stc.peers.registry import PEER_METHODS
from stc.peers.rules import uniform_positions
from stc.peers.temporal import DyCokeSelector, EVSSelector, TimeChatSelector, pixel_cells
from stc.peers.tome import TokenMerging, ToMeSelector, bipartite_soft_matching, merge_to_budget, merge_weighted
from stc.peers.vidcom2 import VidCom2Selector, chunk_budgets
from stc.peers.visionzip import VisionZipSelector, attention_received, visionzip_frame

__all__ = [
    "DyCokeSelector", "EVSSelector", "FrameContext", "FrameSelector", "MethodConfig", "ObjectCells", "Option",
    "OracleSelector", "PEER_METHODS", "RandomSelector", "Selection", "Selector", "TimeChatSelector", "ToMeSelector",
    "TokenMerging", "UniformSelector", "VidCom2Selector", "VisionZipSelector", "attention_received",
    "bipartite_soft_matching", "chunk_budgets", "ground_truth", "merge_to_budget", "merge_weighted", "pixel_cells",
    "uniform_positions", "visionzip_frame",
]
