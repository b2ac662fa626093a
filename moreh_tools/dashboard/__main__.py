"""``python -m moreh_tools.dashboard``: the dashboard without going through moreh-smi."""

import sys

from moreh_tools.dashboard.cli import main

sys.exit(main())
