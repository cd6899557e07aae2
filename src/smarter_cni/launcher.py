"""The small executable put in the CNI bin dir.

Runtimes exec it once per pod operation, so it starts Python with -I (no
environment or user site influence, nothing a caller can inject) and -S (no
site import, ~10 ms saved), puts the package on sys.path itself and jumps
straight to the thin client (`client.py`), which hands the request to the
resident server or runs the plugin in-process, and leaves through
`posix._exit`. The `loopback` launcher runs the same client, named
`main('loopback')`.
"""

from __future__ import annotations

import os

from .files import write_atomic

PLUGIN_HEADER = "smarter-cni CNI plugin launcher (written by `smarter-cni install`)."
TEMPLATE = """#!{python} -IS
# {header}
import sys
sys.path.insert(0, {package_root!r})
from {module} import main
sys.exit(main({plugin}))
"""


def package_root() -> str:
    """The directory that holds the `smarter_cni` package."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def render(python: str, root: str = "", module: str = "smarter_cni.client",
           header: str = PLUGIN_HEADER, plugin: str = "") -> str:
    """`plugin`: the name passed to main() (the client's plugin, e.g. "loopback"); "": none."""
    return TEMPLATE.format(python=python, package_root=root or package_root(), module=module,
                           header=header, plugin=repr(plugin) if plugin else "")


def write(dest: str, python: str, root: str = "", module: str = "smarter_cni.client",
          header: str = PLUGIN_HEADER, plugin: str = "") -> None:
    """Write a launcher of `module`'s main() atomically (temp file + rename), mode 0755."""
    write_atomic(dest, render(python, root, module, header, plugin), 0o755)
