"""``python -m anomstream`` runs the command-line interface."""

import sys

from anomstream.cli import main

sys.exit(main())
