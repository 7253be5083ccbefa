"""``python -m spattn.cli``: the ``spattn`` console script.

In: ``sys.argv``. Out: the exit status of :func:`spattn.cli.main`.
"""

import sys

from . import main

sys.exit(main())
