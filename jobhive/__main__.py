"""`python -m jobhive ENDPOINT field=value ...`: see jobhive.cli."""

import sys

from jobhive.cli import main

sys.exit(main())
