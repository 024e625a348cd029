"""``python -m sdplite``: the same as the ``sdplite`` command."""

import sys

from .cli import main

sys.exit(main())
