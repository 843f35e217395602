"""``python -m convscope.train`` (and ``torchrun -m convscope.train``).

The command itself lives in :mod:`convscope.train.command`, so that importing the
package does not import this module (runpy would warn when it then runs it).
"""

import sys

from convscope.train.command import main

sys.exit(main())
