"""`python -m spg_hf.compare`: the same as `spg-hf compare`."""

import sys

from spg_hf.compare.cli import main

sys.exit(main())
