"""Type tests that the configs' validation shares: an int that is not a bool, a real number that
is neither a bool nor NaN."""

from __future__ import annotations


def is_int(value) -> bool:
    """True for an int (bool excluded: True is no interval)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """True for an int or float that is not a bool and not NaN (the one value unequal to itself;
    unlike math.isnan, this never overflows on a huge int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


__all__ = ["is_int", "is_number"]
