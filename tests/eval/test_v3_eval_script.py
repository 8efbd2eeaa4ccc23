"""docs/testbed-v3-eval.sh: every run it names is a valid `stc eval synthetic` method, and the ER
methods it suggests cover each of them with the same config (so docs/er_accuracy.py matches all)."""

import json
import re
import subprocess
from pathlib import Path

import pytest

from stc.cli import build_parser, stc_config_from_args
from stc.eval.synthetic.correlation import _config_key
from stc.eval.synthetic.retention import budget_runs, evidence_methods

SCRIPT = Path(__file__).parents[2] / "docs" / "testbed-v3-eval.sh"


def script_methods() -> dict[str, list[str]]:
    """label -> flags of the METHODS and LONG_METHODS entries ("label|--flag value ...")."""
    return {label: flags.split() for label, flags in re.findall(r'"([a-z0-9_.-]+)\|(--[^"]+)"', SCRIPT.read_text())}


def er_methods() -> str:
    match = re.search(r"^ER_METHODS=(.+?)\n(?=\S+=|#|$)", SCRIPT.read_text().replace("\\\n", ""), re.M)
    return match.group(1)


def test_every_run_of_the_script_has_the_config_of_one_er_run():
    methods = script_methods()
    assert {"evidence-oracle", "random", "stc", "stc-pruner", "stc-pruner-dual_anchor",
            "stc-gaussian_positional-mix0.3"} <= set(methods)
    er_keys = {_config_key(json.loads(json.dumps(run.config.__dict__)))
               for run in budget_runs(evidence_methods(er_methods()), [0.3, 0.15], draws=1) if run.config is not None}
    runs = [[*flags, "--keep-ratio", keep] for flags in methods.values() for keep in ("0.3", "0.15")]
    for flags in [*runs, ["--method", "stc-cacher"]]:  # stc-cacher: once, no budget
        config = stc_config_from_args(build_parser().parse_args(["eval", "synthetic", *flags]))
        assert _config_key(json.loads(json.dumps(config.__dict__))) in er_keys, flags
    gaussian_positional = build_parser().parse_args(["eval", "synthetic", *methods["stc-gaussian_positional-mix0.3"]])
    assert stc_config_from_args(gaussian_positional).mix_weight == 0.3


@pytest.mark.parametrize("arguments, message", [
    ([], "docs/testbed-v3-eval.sh MODEL OUT [N [ER_JSON|- [long]]]"),
    (["/no/such/model", "out"], "testbed-v3-eval.sh: error: MODEL /no/such/model is no folder"),
    ([".", "out", "0"], "testbed-v3-eval.sh: error: N must be an integer >= 1, got '0'"),
    ([".", "out", "2", "/no/er.json"], "testbed-v3-eval.sh: error: ER_JSON /no/er.json: no such file"),
    ([".", "out", "2", "-", "short"], "testbed-v3-eval.sh: error: the 5th argument is 'long' or nothing"),
])
def test_bad_arguments_are_refused_before_any_run(arguments, message, tmp_path):
    result = subprocess.run(["bash", str(SCRIPT), *arguments], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr and not (tmp_path / "out").exists()
