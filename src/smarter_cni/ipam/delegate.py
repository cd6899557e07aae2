"""Delegate address management to a standard IPAM plugin (e.g. host-local).

As the spec says: exec the plugin named in `ipam.type` from CNI_PATH with
the same environment and the same network config on stdin. Two
allowances for older IPAM plugins (Debian 12 ships host-local 1.1.1, which
stops at cniVersion 1.0.0 and has no STATUS or GC): a config version the
plugin refuses is retried at the newest version it does support, and GC
and STATUS are only delegated to a plugin that speaks 1.1.0 — otherwise
GC releases each stale attachment with a DEL, which every version has.
"""

from __future__ import annotations

import os

from ..cni import jsonfast, version
from ..cni.errors import INCOMPATIBLE_VERSION, IPAM_PLUGIN_FAILURE, CNIError
from ..cni.result import Result, from_dict
from ..run import find_program, run

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..cni.request import Request


def _plugin_path(request: Request, kind: str) -> str:
    path = find_program(kind, request.path) if request.path else None
    if path is None or os.path.dirname(path) not in request.path:
        raise CNIError(IPAM_PLUGIN_FAILURE,
                       f"IPAM plugin {kind!r} was not found in CNI_PATH ({':'.join(request.path)})")
    return path


def _exec(request: Request, kind: str, command: str, stdin: bytes,
          env_overrides: dict[str, str] | None = None) -> Any:
    env = dict(os.environ)
    env["CNI_COMMAND"] = command
    for key, value in (env_overrides or {}).items():
        if value:
            env[key] = value
        else:
            env.pop(key, None)
    done = run([_plugin_path(request, kind)], stdin, env=env, timeout=30)
    answer: Any = None
    text = done.stdout.strip()
    if text:
        try:
            answer = jsonfast.loads(text)
        except jsonfast.JSONError:
            answer = None
    if done.returncode != 0:
        if isinstance(answer, dict) and isinstance(answer.get("code"), int):
            raise CNIError(answer["code"], f"{kind}: {answer.get('msg', '')}",
                           str(answer.get("details", "")))
        raise CNIError(IPAM_PLUGIN_FAILURE, f"IPAM plugin {kind} {command} failed: {done.error_text}")
    return answer


def supported_versions(request: Request, kind: str) -> list[str]:
    answer = _exec(request, kind, "VERSION",
                   jsonfast.dumps({"cniVersion": request.cni_version}).encode())
    found = answer.get("supportedVersions") if isinstance(answer, dict) else None
    return [v for v in found if isinstance(v, str)] if isinstance(found, list) else []


def _config_at(request: Request, cni_version: str) -> bytes:
    return jsonfast.dumps(dict(request.config, cniVersion=cni_version)).encode()


def invoke(request: Request, kind: str, command: str,
           env_overrides: dict[str, str] | None = None) -> Any:
    """Run `command` on the IPAM plugin; retry once at a version it speaks."""
    try:
        return _exec(request, kind, command, request.raw_config, env_overrides)
    except CNIError as err:
        if err.code != INCOMPATIBLE_VERSION:
            raise
        older = [v for v in supported_versions(request, kind)
                 if v in version.ALL_KNOWN and version.parse(v) < version.parse(request.cni_version)]
        if not older:
            raise
        newest = max(older, key=version.parse)
        return _exec(request, kind, command, _config_at(request, newest), env_overrides)


def speaks_110(request: Request, kind: str) -> bool:
    return "1.1.0" in supported_versions(request, kind)


def add(request: Request, kind: str) -> Result:
    result = from_dict(invoke(request, kind, "ADD"))
    if not result.ips:  # which families the network needs: bridge._delegate_add checks
        raise CNIError(IPAM_PLUGIN_FAILURE, f"IPAM plugin {kind} returned no address")
    return result


def delete(request: Request, kind: str, container_id: str = "", ifname: str = "") -> None:
    """Release an attachment; another one than the request's when GC names it."""
    overrides = None
    if container_id:
        overrides = {"CNI_CONTAINERID": container_id, "CNI_IFNAME": ifname, "CNI_NETNS": ""}
    invoke(request, kind, "DEL", overrides)


def check(request: Request, kind: str) -> None:
    invoke(request, kind, "CHECK")


def gc(request: Request, kind: str, stale: list[tuple[str, str]]) -> None:
    if speaks_110(request, kind):
        invoke(request, kind, "GC")
        return
    for container_id, ifname in stale:
        delete(request, kind, container_id, ifname)


def status(request: Request, kind: str) -> None:
    """Ask a 1.1.0 IPAM plugin; for an older one, that it answers VERSION is all we can know."""
    if speaks_110(request, kind):
        invoke(request, kind, "STATUS")
