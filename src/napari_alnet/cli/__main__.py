"""``python -m napari_alnet.cli``."""

import sys

from . import main

sys.exit(main())
