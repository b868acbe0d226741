"""`python -m tether` is the `tether` command."""

import sys

from .cli import main

sys.exit(main())
