import pytest

import stc
from stc.config import STCConfig
from stc.methods import stc_method_config


def test_defaults_follow_the_paper():
    c = STCConfig()
    assert (c.cacher, c.cache_interval, c.update_ratio) == (True, 2, 0.25)
    assert (c.pruner, c.keep_ratio, c.alpha, c.history_window, c.pruner_scoring) == (True, 0.3, 0.5, None, "gaussian")


@pytest.mark.parametrize(
    "field, value",
    [
        ("cache_interval", 0),
        ("cache_interval", 1.5),
        ("cache_interval", True),
        ("update_ratio", 0.0),
        ("update_ratio", 1.01),
        ("update_ratio", float("nan")),
        ("update_ratio", 10**400),
        ("keep_ratio", 0),
        ("keep_ratio", 2.0),
        ("keep_ratio", "0.3"),
        ("alpha", -0.1),
        ("alpha", 1.5),
        ("history_window", 0),
        ("pruner_scoring", "random"),
        ("novelty_weight", -0.1),
        ("novelty_weight", 1.01),
        ("novelty_weight", float("nan")),
        ("motion_radius", 0),
        ("motion_radius", 1.0),
        ("motion_radius", True),
        ("coverage", -0.01),
        ("coverage", float("inf")),
        ("coverage", "0.1"),
        ("cacher", 1),
        ("pruner", "yes"),
    ],
)
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        STCConfig(**{field: value})


def test_boundaries_are_valid():
    STCConfig(cache_interval=1, update_ratio=1.0, keep_ratio=1.0, alpha=0.0, history_window=1)
    STCConfig(alpha=1.0, pruner_scoring="gaussian")
    STCConfig(novelty_weight=0.0, motion_radius=1, coverage=0.0)
    STCConfig(novelty_weight=1.0, coverage=1e6, pruner_scoring="motion")


def test_new_pruner_knobs_are_documented_and_off_by_default():
    c = STCConfig()
    assert (c.novelty_weight, c.motion_radius, c.coverage) == (0.5, 1, 0.0)
    for name in ("novelty_weight", "motion_radius", "coverage", "positional", "change_novelty", "motion"):
        assert name in STCConfig.__doc__


def test_replace_validates():
    with pytest.raises(ValueError, match="keep_ratio"):
        STCConfig().replace(keep_ratio=0.0)


def test_method_names():
    assert stc_method_config("dense") is None
    assert stc_method_config("stc-cacher").pruner is False
    assert stc_method_config("stc-pruner").cacher is False
    with pytest.raises(ValueError, match="unknown method"):
        stc_method_config("magic")


def test_import_stc_does_not_import_transformers():
    import subprocess
    import sys

    code = "import sys, stc; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert stc.STCConfig is STCConfig
