"""The one place that knows how the transformers releases this project supports differ.

transformers 5.25 renamed the KV-cache argument and output field `past_key_values` to `cache` (the
old name warns and goes away in 5.40); 5.20-5.24 know only `past_key_values`.
"""

from __future__ import annotations

import inspect

from transformers.masking_utils import create_causal_mask

CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"


def cache_in_call(kwargs: dict):
    """The KV cache a forward or generate call was given, under either name (None if none)."""
    cache = kwargs.get("cache")
    return kwargs.get("past_key_values") if cache is None else cache
