"""The node DNS on an IPv6 address too (`dnsAddress6` / `--listen6`): a second Server
on that address, in a thread of its own, with the same registry, names and access rule.

A second socket loop rather than more sockets in the first keeps server.py's hot loop
untouched; it costs one more copy of the name tables (small: a few KB per hundred pods).
"""

from __future__ import annotations

import logging
import threading

from .acl import Acl
from .address import ensure_address, is_local, remove_address

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

log = logging.getLogger("smarter-cni.dns")


def prefix6_acl(conf: Any, subnets: list[tuple[int, int]]) -> Acl:
    """The service's access rule, with the pods' IPv6 prefix (subnet6) allowed as well."""
    subnets6 = []
    if conf.subnet6 is not None:
        mask = ((1 << 128) - 1) ^ ((1 << (128 - conf.prefix6)) - 1)
        subnets6.append((conf.subnet6, mask))
    return Acl(subnets, subnets6=subnets6)


def start(listen6: str, args: Any, conf: Any, acl: Acl, make_server: Callable[..., Any]
          ) -> tuple[Any, Callable[[], None]]:
    """Serve on `listen6` (adding it to the interface unless --no-address-setup);
    returns the server (the reconciler watches it) and the function that stops it and
    takes the address back."""
    if args.no_address_setup and not is_local(listen6):
        raise OSError(f"{listen6} is not an address of this node")
    added_to = ""
    if not args.no_address_setup:
        done = ensure_address(listen6, args.interface)
        if done != "present":
            log.info("address %s %s", listen6, done)
            added_to = done.rsplit(" ", 1)[-1]
    server = make_server(listen6, acl)
    thread = threading.Thread(target=server.serve_forever, name="dns6", daemon=True)
    thread.start()
    log.info("serving also on [%s]:%d udp+tcp", listen6, args.port)

    def stop() -> None:
        server.stop = True
        thread.join(timeout=5)
        server.close()
        if added_to:
            remove_address(listen6, added_to)

    return server, stop
