"""The testbed: a tiny LLaVA-OneVision trained on the synthetic world (`stc.eval.synthetic`), shipped
as the default model of `stc run`, `stc demo` and `stc eval synthetic`. `TESTBED_DIR` is where it
lives (package data: the same in a wheel, an sdist or an editable install); the trainer is
`stc.eval.testbed.train`."""

from importlib.resources import files
from pathlib import Path

TESTBED_DIR = Path(str(files("stc.eval.testbed").joinpath("assets", "testbed-llava-ov")))
