"""`python -m smarter_cni.dns ...`: the same as `smarter-cni dns ...`."""

from __future__ import annotations

import sys

from .service import main

sys.exit(main(sys.argv[1:]))
