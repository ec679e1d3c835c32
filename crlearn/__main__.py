"""``python -m crlearn ...``: the ``crlearn`` command, e.g. under ``torchrun --standalone --nproc-per-node=2 -m crlearn
train`` (torchrun starts modules with ``-m``, not console scripts)."""

import sys

from crlearn.cli.main import main

sys.exit(main())
