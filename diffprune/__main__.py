"""``python -m diffprune``: see diffprune/cli.py."""
import sys

from diffprune.cli import main

sys.exit(main())
