"""`python -m farm.cli`, the same as the `farm` command (its thin client, which runs the command here when no
server takes it)."""

import sys

from farm.client import main

sys.exit(main())
