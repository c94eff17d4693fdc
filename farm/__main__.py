"""`python -m farm`, the same as the `farm` command."""

import sys

from farm.client import main

sys.exit(main())
