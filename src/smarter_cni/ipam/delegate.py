"""Delegate address management to a standard IPAM plugin (e.g. host-local).

As the spec says: exec the plugin named in `ipam.type` from CNI_PATH with
the same environment and the same network config on stdin.
"""

from __future__ import annotations

import os

from ..cni import jsonfast
from ..cni.errors import IPAM_PLUGIN_FAILURE, CNIError
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


def invoke(request: Request, kind: str, command: str, stdin: bytes | None = None) -> Any:
    env = dict(os.environ)
    env["CNI_COMMAND"] = command
    done = run([_plugin_path(request, kind)], stdin if stdin is not None else request.raw_config,
               env=env, timeout=30)
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


def add(request: Request, kind: str) -> Result:
    answer = invoke(request, kind, "ADD")
    result = from_dict(answer)
    if not any(":" not in ip.address for ip in result.ips):
        raise CNIError(IPAM_PLUGIN_FAILURE, f"IPAM plugin {kind} returned no IPv4 address")
    return result


def delete(request: Request, kind: str) -> None:
    invoke(request, kind, "DEL")
