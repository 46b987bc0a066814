"""``python -m vitrain`` runs the command line."""

import sys

from .cli import main

if __name__ == "__main__":  # not when a fork server or a spawned worker imports it
    sys.exit(main())
