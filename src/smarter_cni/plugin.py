"""The CNI plugin: parse the request, pick the data plane, call it.

Bridge mode is imported lazily by mode so each invocation only pays for
the code it runs.
"""

from __future__ import annotations

from .cni import dispatch, version
from .cni.errors import INVALID_NETWORK_CONFIG, CNIError
from .netconf import parse_netconf

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .cni.request import Request
    from .netconf import NetConf

GC_KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")


def _dataplane(conf: NetConf) -> Any:
    if conf.mode == "docker":
        from .dataplane import docker_mode

        return docker_mode
    from .dataplane import bridge

    return bridge


def _prepare(request: Request) -> NetConf:
    asked = request.config.get("cniVersion")
    if not asked:
        raise CNIError(version.INCOMPATIBLE_VERSION,
                       "network config has no cniVersion; set it to one of "
                       + ", ".join(version.BRIDGE_VERSIONS))
    conf = parse_netconf(request.config)
    supported = version.DOCKER_VERSIONS if conf.mode == "docker" else version.BRIDGE_VERSIONS
    version.require_supported(request.cni_version, supported)
    return conf


def cmd_add(request: Request) -> dict:
    conf = _prepare(request)
    result = _dataplane(conf).add(request, conf)
    return result.to_dict(request.cni_version)


def cmd_del(request: Request) -> None:
    conf = _prepare(request)
    _dataplane(conf).delete(request, conf)


def cmd_check(request: Request) -> None:
    conf = _prepare(request)
    if not version.at_least(request.cni_version, "0.4.0"):
        raise CNIError(version.INCOMPATIBLE_VERSION,
                       f"CHECK needs cniVersion 0.4.0 or later, config has {request.cni_version}")
    _dataplane(conf).check(request, conf)


def _require_110(request: Request) -> None:
    if not version.at_least(request.cni_version, "1.1.0"):
        raise CNIError(version.INCOMPATIBLE_VERSION,
                       f"{request.command} needs cniVersion 1.1.0, config has {request.cni_version}")


def cmd_status(request: Request) -> None:
    conf = _prepare(request)
    _require_110(request)
    _dataplane(conf).status(request, conf)


def cmd_gc(request: Request) -> None:
    conf = _prepare(request)
    _require_110(request)
    _dataplane(conf).gc(request, conf, valid_attachments(request.config))


def valid_attachments(config: dict) -> set[tuple[str, str]]:
    entries: Any | None = None
    for key in GC_KEYS:
        if key in config:
            entries = config[key]
            break
    if entries is None:
        raise CNIError(INVALID_NETWORK_CONFIG,
                       "GC needs \"cni.dev/valid-attachments\": a list of "
                       "{\"containerID\": ..., \"ifname\": ...}")
    if not isinstance(entries, list):
        raise CNIError(INVALID_NETWORK_CONFIG, "cni.dev/valid-attachments must be a list")
    valid = set()
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("containerID"), str) \
                or not isinstance(entry.get("ifname"), str):
            raise CNIError(INVALID_NETWORK_CONFIG, "each valid attachment needs string "
                           "\"containerID\" and \"ifname\"")
        valid.add((entry["containerID"], entry["ifname"]))
    return valid


def cmd_version(request: Request) -> dict:
    return {"cniVersion": version.LATEST, "supportedVersions": list(version.DOCKER_VERSIONS)}


HANDLERS = {
    "ADD": cmd_add,
    "DEL": cmd_del,
    "CHECK": cmd_check,
    "STATUS": cmd_status,
    "GC": cmd_gc,
    "VERSION": cmd_version,
}


def main() -> int:
    return dispatch.run(HANDLERS)
