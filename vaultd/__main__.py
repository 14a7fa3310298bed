"""``python -m vaultd``: the same as the ``vaultd`` script."""

import sys

from .cli import main

sys.exit(main())
