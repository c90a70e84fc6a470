"""``python -m posterlab``: the command line (what ``torchrun ... -m posterlab train`` runs)."""

import sys

from posterlab.cli import main

sys.exit(main())
