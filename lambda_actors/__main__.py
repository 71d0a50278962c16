"""``python -m lambda_actors``: the ``lambda-actors`` command, where no script is on PATH."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
