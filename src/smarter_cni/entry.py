"""The `smarter-cni` (and `c2d`) executable: CNI plugin when a runtime calls
it, the operator's command line otherwise.

A runtime passes everything in CNI_* variables and never an argument, so
the plugin answers when CNI_COMMAND is set (even empty), or when there is
no argument and any other CNI_* variable is set: a runtime that forgot
CNI_COMMAND then gets a spec error (code 4) on stdout, not argparse's
usage. An operator's `smarter-cni status` keeps working with, say,
CNI_PATH exported in the shell.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Mapping, Sequence


def invoked_as_plugin(environ: Mapping[str, str], argv: Sequence[str]) -> bool:
    if "CNI_COMMAND" in environ:
        return True
    return not argv and any(name.startswith("CNI_") for name in environ)


def main() -> int:
    argv = sys.argv[1:]
    if invoked_as_plugin(os.environ, argv):
        from .plugin import main as plugin_main

        return plugin_main()
    from .cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
