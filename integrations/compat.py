"""The one place that knows how the transformers releases this project supports differ.

transformers 5.25 renamed the KV-cache argument and output field `past_key_values` to `cache` (the
old name warns and goes away in 5.40); 5.20-5.24 know only `past_key_values`.

A torchvision that is installed but does not import (built for another torch: "operator
torchvision::nms does not exist") makes transformers fail to import any model class; absent is fine.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect

import torch
from transformers.masking_utils import create_causal_mask

CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"


def cache_in_call(kwargs: dict):
    """The KV cache a forward or generate call was given, under either name (None if none)."""
    cache = kwargs.get("cache")
    return kwargs.get("past_key_values") if cache is None else cache


def torchvision_problem() -> str | None:
    """Why the installed torchvision cannot be used, in one sentence; None if it imports or is absent."""
    if importlib.util.find_spec("torchvision") is None:
        return None
    try:
        import torchvision  # noqa: F401  (on use: importing it is the test)
    except Exception as exc:  # a mismatched build raises RuntimeError, a broken install anything
        try:
            version = importlib.metadata.version("torchvision")
        except importlib.metadata.PackageNotFoundError:
            version = "(unknown version)"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return (f"torchvision {version} is installed but does not import beside torch {torch.__version__} ({reason}), "
                "and transformers cannot load models while it is there: uninstall it (pip uninstall torchvision) "
                "or install the torchvision build made for this torch")
    return None
