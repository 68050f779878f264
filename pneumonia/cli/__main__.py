"""`python -m pneumonia.cli`: the same as the `pneumonia` command."""

import sys

from pneumonia.cli import main

sys.exit(main())
