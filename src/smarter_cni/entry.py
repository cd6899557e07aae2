"""The `smarter-cni` (and `c2d`) executable: CNI plugin when a runtime calls
it (CNI_COMMAND is set), the operator's command line otherwise."""

from __future__ import annotations

import os
import sys


def main() -> int:
    if "CNI_COMMAND" in os.environ:
        from .plugin import main as plugin_main

        return plugin_main()
    from .cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
