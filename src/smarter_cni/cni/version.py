"""Spec versions: which exist, which we speak, and how to compare them."""

from __future__ import annotations

from .errors import INCOMPATIBLE_VERSION, CNIError

LATEST = "1.1.0"
# Every version whose config we accept, oldest first.
ALL_KNOWN = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
# Bridge mode starts at 0.3.0, the first version with interfaces in results.
BRIDGE_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
# Docker mode also serves the original c2d configs, which said 0.2.0.
DOCKER_VERSIONS = ("0.1.0", "0.2.0") + BRIDGE_VERSIONS


def parse(version: str) -> tuple[int, int, int]:
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isascii() and p.isdigit() and len(p) < 6 for p in parts):
        raise CNIError(INCOMPATIBLE_VERSION, f"cniVersion {version!r} is not a version number")
    return int(parts[0]), int(parts[1]), int(parts[2])


def at_least(version: str, minimum: str) -> bool:
    return parse(version) >= parse(minimum)


def require_supported(version: str, supported: tuple[str, ...]) -> None:
    if version not in supported:
        parse(version)
        raise CNIError(
            INCOMPATIBLE_VERSION,
            f"incompatible CNI versions: config is {version!r}, "
            f"this plugin supports {', '.join(supported)}",
        )
