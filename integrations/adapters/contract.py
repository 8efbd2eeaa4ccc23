"""The contract between STC and a model family: one adapter per family implements it.

`stc.patch` uses the patching half (`check`, `check_config`, `install`, `uninstall`); the
streaming engine, `stc bench`, the demo and the evaluation use the streaming half through these
public methods only. Adding a family means one adapter file implementing `VideoLLMAdapter`, one
row in `stc.api.ADAPTERS` and one row in the adapter test battery (`tests/test_adapters.py`).

What an adapter hands the engine for one clip is a `ClipBlocks`: per block (a frame, or a
temporal slice of `frames_per_block` frames), the embeddings the LLM prefills (text the family
puts around a frame, e.g. Qwen3-VL's timestamp, followed by the kept visual tokens), the block's
position layout (read back only by the same adapter's `visual_positions`), which visual tokens
were kept, and extra per-token features added to the hidden states after the first decoder
layers (Qwen3-VL's DeepStack), gathered with the same keep index as the tokens.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from torch import Tensor

from stc.state import STCState


@dataclass
class ClipBlocks:
    """The engine's input for one clip, one entry per block, in time order.

    tokens:  [L_i, D] embeddings the LLM prefills for block i (text around the frame included).
    layouts: what `visual_positions` needs to place block i (adapter-defined, [rows, L_i] long).
    visual:  how many of block i's L_i tokens are visual tokens (the rest is text).
    kept:    per block, the kept positions among the frame's visual tokens (ascending), or None
             when nothing was selected (every token kept).
    extras:  per block, [layers, L_i, D] features added to the hidden states after decoder layers
             0..layers-1 (zero at text tokens), or None.
    """

    tokens: list[Tensor]
    layouts: list[Tensor]
    visual: list[int]
    kept: list[Tensor] | None = None
    extras: list[Tensor] | None = None

    def __post_init__(self):
        lengths = [len(t) for t in self.tokens]
        if [layout.shape[-1] for layout in self.layouts] != lengths:
            raise ValueError(f"block layouts cover {[layout.shape[-1] for layout in self.layouts]} tokens, blocks hold {lengths}")
        if self.extras is not None and [e.shape[1] for e in self.extras] != lengths:
            raise ValueError(f"extra features cover {[e.shape[1] for e in self.extras]} tokens, blocks hold {lengths}")


class VideoLLMAdapter(abc.ABC):
    """One model family behind STC. Class attributes: `family` (shown to users),
    `video_placeholder` (what the family's chat template renders for a video; the engine splits
    the template around it) and `frames_per_block` (frames folded into one block)."""

    family: str = ""
    video_placeholder: str = "<video>"
    frames_per_block: int = 1

    # -- patching (stc.patch / stc.unpatch) ----------------------------------------------------

    @abc.abstractmethod
    def check(self, model) -> None:
        """Raise TypeError when `model` does not have the layout this adapter patches; read the
        per-checkpoint facts the adapter needs."""

    def check_config(self, model, config) -> None:
        """Raise ValueError for an STCConfig / MethodConfig this family cannot run, with the reason."""

    @abc.abstractmethod
    def install(self, model, state: STCState) -> None:
        """Patch this model instance (never its class) so that STC runs with `state`, recording
        every change in `self.patcher` (an `InstancePatch`)."""

    def uninstall(self, model) -> None:
        """Undo `install` exactly."""
        self.patcher.restore()

    # -- streaming engine ----------------------------------------------------------------------

    def set_sample_fps(self, fps: float) -> None:
        """Frames arrive `fps` per second (families whose positions depend on time use it)."""

    @abc.abstractmethod
    def vision_output_module(self, model):
        """The module whose input is the vision encoder's output (fidelity measurements hook it)."""

    @abc.abstractmethod
    def decoder_driver(self, model):
        """A `DecoderDriver` over the model's language model."""

    @abc.abstractmethod
    def preprocess(self, model, processor, frames):
        """uint8 frames [F, H, W, 3] -> what `stream_blocks` takes, on the model's device."""

    @abc.abstractmethod
    def stream_blocks(self, model, state: STCState, pixels, times: list[float], text) -> ClipBlocks:
        """One clip of the current stream through the vision encoder (with the Cacher) and the
        selection; `times` are the clip's frame times in seconds, `text` gives token ids
        (`text.ids(str)`) and input embeddings (`text.embed(ids)`) for text the family puts
        around frames (the engine's `BlockText`)."""

    batches_streams: bool = False  # `stream_blocks_batch` encodes several streams in one call

    def stream_blocks_batch(self, model, state: STCState, pixels: list, times: list[list[float]],
                            texts: list) -> list[ClipBlocks]:
        """Clips of several streams in one vision-encoder call (entry s: what `preprocess` gave
        for stream s of `state`, with its frame times and `text`; the clips have equal shapes):
        one ClipBlocks per stream, each what `stream_blocks` gives that stream alone. Families
        that have it set `batches_streams`."""
        raise NotImplementedError(f"{self.family} encodes one stream per call")

    @abc.abstractmethod
    def text_positions(self, start: int, count: int) -> Tensor:
        """[rows, count] positions of `count` text tokens from `start`."""

    @abc.abstractmethod
    def visual_positions(self, start: int, layouts: list[Tensor]) -> tuple[Tensor, int]:
        """Positions [rows, sum L_i] of blocks placed one after another from `start`, and the
        extent: where text following them starts, relative to `start`."""
