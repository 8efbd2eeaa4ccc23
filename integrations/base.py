"""What every model adapter shares: per-instance method replacement that can be undone, and
the capture of a block's K/V/attention/MLP outputs on reference frames."""

from __future__ import annotations

import functools
from collections.abc import Callable

from torch import Tensor, nn

from stc.cacher import BlockReference

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
        self._hooks.append(module.register_forward_hook(hook))

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


def time_module(patcher: InstancePatch, module: nn.Module, timer, stage: str) -> None:
    """Charge `module`'s forward time to `stage` of `timer` (when the timer is enabled)."""
    module_hooks = (
        module.register_forward_pre_hook(lambda m, args: timer.start(stage)),
        module.register_forward_hook(lambda m, args, out: timer.stop(stage)),
    )
    patcher._hooks.extend(module_hooks)


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
        return out, BlockReference(rec["keys"], rec["values"], rec["attn_out"], rec["mlp_out"])
