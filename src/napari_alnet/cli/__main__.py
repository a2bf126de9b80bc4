"""``python -m napari_alnet.cli``: the ``alnet`` program (``cli.main``), ended as ``launch.leave`` ends it."""

import sys

from ..launch import leave
from . import main

code = main()
leave(code)
sys.exit(code)
