"""``python -m monitor`` is ``riskmon``."""

import sys

from monitor.app.cli import main

sys.exit(main())
