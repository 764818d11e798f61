"""``python -m geopresence`` is the ``geopresence`` command."""

import sys

from geopresence.cli import main

sys.exit(main())
