"""What every model adapter shares: per-instance method replacement that can be undone, the
capture of a block's K/V/attention/MLP outputs on reference frames, and the pruned prompt: its
keep mask, the gather of its kept tokens and their positions."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor, nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from stc.cacher import BlockReference

from stc.integrations.compat import cache_in_call

_MISSING = object()


class InstancePatch:
    """Replaces attributes of individual module instances and puts them back exactly.

    Only the instance `__dict__` is touched, never a class: other instances of the same
    transformers class are unaffected.
    """

    def __init__(self):
        self._saved: list[tuple[object, str, object]] = []
        self._hooks = []

    def wrap_method(self, obj, name: str, make: Callable[[Callable], Callable]) -> None:
        """Set obj.<name> to make(original bound method), keeping the original's signature
        (generate() inspects signatures to route keyword arguments)."""
        original = getattr(obj, name)
        wrapper = functools.wraps(original)(make(original))
        self._saved.append((obj, name, obj.__dict__.get(name, _MISSING)))
        obj.__dict__[name] = wrapper

    def hook(self, module: nn.Module, hook: Callable) -> None:
        self.track(module.register_forward_hook(hook))

    def track(self, handle) -> None:
        """Remove this hook handle on `restore`."""
        self._hooks.append(handle)

    def restore(self) -> None:
        for handle in self._hooks:
            handle.remove()
        for obj, name, saved in reversed(self._saved):
            if saved is _MISSING:
                obj.__dict__.pop(name, None)
            else:
                obj.__dict__[name] = saved
        self._hooks.clear()
        self._saved.clear()


def time_span(patcher: InstancePatch, first: nn.Module, last: nn.Module, timer, stage: str) -> None:
    """Charge the time from `first`'s forward start to `last`'s forward end (the same module
    for one module's time) to `stage` of `timer` (when the timer is enabled)."""
    patcher.track(first.register_forward_pre_hook(lambda m, args: timer.start(stage)))
    patcher.track(last.register_forward_hook(lambda m, args, out: timer.stop(stage)))


def video_keep_mask(selections, frame_tokens: list[int], device) -> Tensor:
    """Flat keep mask over the video tokens of consecutive streams, as they are laid out in a
    prompt: stream s has len(selections[s].positions) frames of frame_tokens[s] tokens each."""
    masks = []
    for selection, tokens in zip(selections, frame_tokens):
        mask = torch.zeros(len(selection.positions), tokens, dtype=torch.bool, device=device)
        for row, positions in zip(mask, selection.positions):
            row[positions.to(device)] = True
        masks.append(mask.flatten())
    return torch.cat(masks)


def sequence_keep(is_video: Tensor, video_keep: Tensor) -> Tensor:
    """[B, L] keep mask of a prompt: every non-video token, and the video tokens `video_keep`
    (flat, in prompt order) marks."""
    keep = ~is_video
    keep[is_video] = video_keep
    return keep


class KeptSequence:
    """A prompt's kept tokens (keep mask [B, L]), each row left-padded to the longest kept row.
    `gather` takes any sequence-indexed tensor, [B, L] or [..., B, L] (mRoPE rows), to the kept
    layout [..., B, length], padding slots set to `fill`; with equal rows nothing is padded."""

    def __init__(self, keep: Tensor):
        lengths = keep.sum(1)
        self.length = int(lengths.max())
        slot = torch.arange(self.length, device=keep.device).view(1, -1)
        self.is_pad = slot < (self.length - lengths).view(-1, 1)  # [B, length]
        self.source = torch.zeros(keep.shape[0], self.length, dtype=torch.long, device=keep.device)
        self.source[~self.is_pad] = keep.nonzero()[:, 1]  # each slot's position in the unpruned row

    @property
    def padded(self) -> bool:
        return bool(self.is_pad.any())

    def gather(self, t: Tensor, fill=0) -> Tensor:
        return t.gather(-1, self.source.expand(*t.shape[:-2], -1, -1)).masked_fill(self.is_pad, fill)


def mask_positions(attention_mask: Tensor | None, batch: int, length: int, device) -> Tensor:
    """[B, length] positions as generate counts them: over the attended tokens (0 at padding), or
    0..length-1 without a mask."""
    if attention_mask is None:
        return torch.arange(length, device=device).expand(batch, -1)
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)


class BlockRecorder:
    """Records one block's key, value, attention-branch and MLP-branch outputs through forward
    hooks while `capture()` runs the block densely (used on reference frames)."""

    def __init__(self):
        self.active = False
        self.record: dict[str, Tensor] = {}

    def hook_for(self, name: str, select: Callable[[object], Tensor] | None = None):
        def hook(module, args, output):
            if self.active:
                self.record[name] = select(output) if select is not None else output

        return hook

    def capture(self, run: Callable[[], Tensor]) -> tuple[Tensor, BlockReference]:
        self.active, self.record = True, {}
        try:
            out = run()
        finally:
            self.active = False
        rec, self.record = self.record, {}
        return out, BlockReference(rec["keys"], rec["values"], rec["attn_out"] + rec["mlp_out"])


def install_prompt_pruning(patcher: InstancePatch, model, prune_inputs: Callable[[dict], dict | None]) -> None:
    """Wrap `model.generate` and `model.forward` so that calls with video go through
    `prune_inputs(kwargs)` (None = nothing to prune). generate returns the caller's full prompt
    followed by the new tokens, as without STC; forward returns outputs for the kept sequence.
    generate selects under no_grad, as the original generate runs; forward keeps the caller's
    grad mode."""

    def make_generate(original):
        def generate(*args, **kwargs):
            args, kwargs = _input_ids_in_kwargs(args, kwargs)
            with torch.no_grad():  # as the original generate (decorated no_grad) encodes the video
                pruned = prune_inputs(kwargs)
            if pruned is None:
                return original(*args, **kwargs)
            out = original(*args, **pruned)
            return _restore_prompt(out, kwargs["input_ids"], pruned["input_ids"].shape[1])

        return generate

    def make_forward(original):
        def forward(*args, **kwargs):
            args, kwargs = _input_ids_in_kwargs(args, kwargs)
            pruned = prune_inputs(kwargs)
            return original(*args, **(kwargs if pruned is None else pruned))

        return forward

    patcher.wrap_method(model, "generate", make_generate)
    patcher.wrap_method(model, "forward", make_forward)


def video_prefill(kwargs: dict, selects: bool) -> tuple[Tensor, Tensor] | None:
    """(input_ids, pixel_values_videos) of a call whose video tokens a selector should shrink,
    or None (no video, no input_ids, or nothing to select). A video prefill on top of a
    non-empty cache is refused: positions after pruning are only defined for a whole prefill."""
    input_ids, pixels = kwargs.get("input_ids"), kwargs.get("pixel_values_videos")
    if pixels is None or input_ids is None or not selects:
        return None
    past = cache_in_call(kwargs)
    if past is not None and past.get_seq_length() > 0:
        raise ValueError(
            "STC-Pruner prunes a video prefill, not a continuation of an existing cache; "
            "use stc.integrations.StreamingSession for streaming over a cache"
        )
    return input_ids, pixels


def pooled(features) -> BaseModelOutputWithPooling:
    """Precomputed features in the form `mm_encoder_outputs` takes."""
    return BaseModelOutputWithPooling(pooler_output=features)


def _input_ids_in_kwargs(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Move a positional first argument (input_ids / inputs) into kwargs["input_ids"]."""
    kwargs = dict(kwargs)
    if "inputs" in kwargs and "input_ids" not in kwargs:
        kwargs["input_ids"] = kwargs.pop("inputs")
    if args and "input_ids" not in kwargs:
        kwargs["input_ids"], args = args[0], args[1:]
    return args, kwargs


def _restore_prompt(out, input_ids: Tensor, pruned_length: int):
    """generate() output over the pruned prompt -> the caller's prompt + the new tokens."""
    sequences = out if isinstance(out, Tensor) else out.sequences
    prompt = input_ids.repeat_interleave(sequences.shape[0] // input_ids.shape[0], dim=0)
    full = torch.cat([prompt.to(sequences.device), sequences[:, pruned_length:]], dim=1)
    if isinstance(out, Tensor):
        return full
    out.sequences = full
    return out
