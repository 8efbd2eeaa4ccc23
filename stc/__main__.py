import sys

from stc.cli import main

sys.exit(main())
