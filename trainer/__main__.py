"""`python -m adadiff.trainer ...` is `adadiff-train ...`."""
import sys

from .cli import main

sys.exit(main())
