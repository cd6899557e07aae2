"""Which address is next: pure policy over ints, no files."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import AbstractSet



def next_free(
    range_start: int,
    range_end: int,
    taken: AbstractSet[int],
    last_reserved: int | None = None,
) -> int | None:
    """The first free address after `last_reserved`, wrapping round once.

    Walking on from the last reservation (as host-local does) keeps a
    just-released address out of reuse for as long as possible, so a stale
    DNS answer or conntrack entry does not reach a new pod.
    """
    size = range_end - range_start + 1
    if size <= 0:
        return None
    if last_reserved is None or not range_start <= last_reserved <= range_end:
        offset = 0
    else:
        offset = last_reserved - range_start + 1
    for step in range(size):
        candidate = range_start + (offset + step) % size
        if candidate not in taken:
            return candidate
    return None
