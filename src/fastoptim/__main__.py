"""``python -m fastoptim`` runs the ``fastoptim`` command."""

import sys

from fastoptim.cli import main

sys.exit(main())
