"""``python -m navai_mw``: the ``navai-mw`` command (see :mod:`navai_mw.cli`)."""

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
