"""Run the command line with `python -m evatok`."""

import sys

from evatok.cli import main

sys.exit(main())
