"""`python -m nmgen ...`: the same as the `nmgen` command."""
import sys

from .cli import main

sys.exit(main())
