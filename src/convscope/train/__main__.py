"""``python -m convscope.train`` and ``torchrun -m convscope.train``."""

import sys

from convscope.train.loop import main

sys.exit(main())
