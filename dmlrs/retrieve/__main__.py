"""``python -m dmlrs.retrieve``: see :mod:`dmlrs.retrieve.cli`."""
import sys

from dmlrs.retrieve.cli import main

if __name__ == "__main__":
    sys.exit(main())
