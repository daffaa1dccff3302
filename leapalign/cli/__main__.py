"""``python -m leapalign.cli`` (what ``accelerate launch -m leapalign.cli`` runs)."""

import sys

from leapalign.cli import main

sys.exit(main())
