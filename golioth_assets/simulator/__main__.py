"""`python -m golioth_assets.simulator`: subprocess mode (--config-json) or the CLI options."""

import sys

from .server import main

sys.exit(main())
