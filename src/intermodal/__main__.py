"""``python -m intermodal`` runs the command line."""

import sys

from intermodal.cli import main

sys.exit(main())
