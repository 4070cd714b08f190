"""``python -m experiments.real_model``: see :mod:`experiments.real_model.cli`."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
