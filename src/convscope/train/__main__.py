"""``python -m convscope.train``: kept for existing users, the same as ``convscope train``.

It forwards its arguments to the one training command line, :func:`convscope.cli.main`
(``torchrun -m convscope.train ...`` therefore works as well; the documented form is
``torchrun --nproc_per_node=2 -m convscope train ...``). An entry point, not part of the
lens: nothing imports this module.
"""

import sys

from convscope.cli import main

main(["train", *sys.argv[1:]])
