"""``python -m navai_mw``: the ``navai-mw`` command (see :mod:`navai_mw.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
