"""`python -m stc.eval ...` = `stc eval ...`, for `accelerate launch -m stc.eval ...`."""

import sys

from stc.cli import main

sys.exit(main(["eval", *sys.argv[1:]]))
