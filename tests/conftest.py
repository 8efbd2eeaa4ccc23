"""Fixtures that many test files share. Tiny models are built from configs (no hub access) and
are fresh per test, since tests patch them; the family batteries build theirs from
tests/families.py."""

import pytest


@pytest.fixture
def llava():
    """A fresh tiny LLaVA-OneVision (float64, seed 0; tests.tiny.tiny_llava)."""
    from tests.tiny import tiny_llava

    return tiny_llava()


@pytest.fixture
def processor():
    """The tiny LLaVA-OneVision's processor (word-level tokenizer, 28 px frames)."""
    from tests.tiny import tiny_processor

    return tiny_processor()


@pytest.fixture
def eval_cli(monkeypatch):
    """`stc` with only the eval command registered (the other commands may import heavy modules)."""
    import stc.cli

    monkeypatch.setattr(stc.cli, "COMMANDS", {"eval": "stc.cli.eval"})
    return stc.cli.main
