"""Read the parts of a kubeconfig that a pod lookup needs.

Kubeconfigs written by kubeadm, k3s and kubectl use a small block-style
subset of YAML; this reads that subset (mappings, `- ` sequences, plain and
quoted scalars, `{}`/`[]`) so the plugin needs no YAML library. Anything
outside the subset raises KubeconfigError with the line number.
"""

from __future__ import annotations

import base64
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class KubeconfigError(ValueError):
    pass


def _scalar(text: str) -> Any:
    text = text.strip()
    if text in ("{}",):
        return {}
    if text in ("[]",):
        return []
    if text[:1] in "{[&*!|>":
        raise KubeconfigError(f"YAML feature {text[:1]!r} is outside the kubeconfig subset")
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        inner = text[1:-1]
        return inner.replace("''", "'") if text[0] == "'" else inner.replace('\\"', '"')
    if text in ("null", "~", ""):
        return None
    if text in ("true", "false"):
        return text == "true"
    return text


def _lines(text: str) -> list[tuple[int, int, str]]:
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#") or stripped == "---":
            continue
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise KubeconfigError(f"line {number}: tabs are not allowed for indentation")
        out.append((len(raw) - len(raw.lstrip(" ")), number, stripped))
    return out


def parse(text: str) -> Any:
    lines = _lines(text)
    value, pos = _block(lines, 0, lines[0][0] if lines else 0)
    if pos != len(lines):
        raise KubeconfigError(f"line {lines[pos][1]}: unexpected indentation")
    return value


def _block(lines: list[tuple[int, int, str]], pos: int, indent: int) -> tuple[Any, int]:
    if pos >= len(lines):
        return None, pos
    if lines[pos][2].startswith("- ") or lines[pos][2] == "-":
        return _sequence(lines, pos, indent)
    return _mapping(lines, pos, indent)


def _mapping(lines: list[tuple[int, int, str]], pos: int, indent: int) -> tuple[dict, int]:
    out: dict[str, Any] = {}
    while pos < len(lines) and lines[pos][0] == indent:
        _, number, text = lines[pos]
        key, sep, rest = text.partition(":")
        if not sep or text.startswith("- "):
            raise KubeconfigError(f"line {number}: expected 'key: value'")
        key = _scalar(key)
        rest = rest.strip()
        pos += 1
        if rest:
            out[key] = _scalar(rest)
        elif pos < len(lines) and (lines[pos][0] > indent or (
                lines[pos][0] == indent and lines[pos][2].startswith("- "))):
            out[key], pos = _block(lines, pos, lines[pos][0])
        else:
            out[key] = None
    return out, pos


def _sequence(lines: list[tuple[int, int, str]], pos: int, indent: int) -> tuple[list, int]:
    out: list[Any] = []
    while pos < len(lines) and lines[pos][0] == indent and lines[pos][2].startswith("-"):
        _, number, text = lines[pos]
        rest = text[1:].strip()
        if not rest:
            pos += 1
            item, pos = _block(lines, pos, lines[pos][0]) if pos < len(lines) else (None, pos)
            out.append(item)
            continue
        if ":" in rest and not rest.startswith(("'", '"')):
            # "- key: value" starts a mapping whose keys sit two columns in
            child_indent = indent + 2
            lines[pos] = (child_indent, number, rest)
            item, pos = _mapping(lines, pos, child_indent)
            out.append(item)
        else:
            out.append(_scalar(rest))
            pos += 1
    return out, pos


class Credentials:
    """Server URL and TLS material of the kubeconfig's current context."""

    __slots__ = ("server", "ca_file", "ca_data", "cert_file", "key_file", "cert_data", "key_data",
                 "token", "insecure", "source", "token_file")

    def __init__(self) -> None:
        self.server = ""
        self.ca_file = self.cert_file = self.key_file = ""
        self.ca_data = self.cert_data = self.key_data = b""
        self.token = ""
        self.insecure = False
        self.source = "kubeconfig"   # or "in-cluster" (incluster.py)
        self.token_file = ""         # where `token` came from, when a file (it rotates)


def _named(entries: Any, name: str, kind: str) -> dict:
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and entry.get("name") == name:
            found = entry.get(kind) or {}
            if not isinstance(found, dict):
                raise KubeconfigError(f"{kind} {name!r} is not a mapping")
            return found
    raise KubeconfigError(f"no {kind} named {name!r}")


def load(path: str) -> Credentials:
    with open(path) as handle:
        doc = parse(handle.read())
    if not isinstance(doc, dict):
        raise KubeconfigError("not a kubeconfig")
    base = os.path.dirname(os.path.abspath(path))
    context_name = doc.get("current-context") or ""
    contexts = doc.get("contexts") or []
    if not context_name and isinstance(contexts, list) and contexts and isinstance(contexts[0], dict):
        context_name = contexts[0].get("name", "")
    context = _named(contexts, context_name, "context")
    cluster = _named(doc.get("clusters"), context.get("cluster", ""), "cluster")
    user = _named(doc.get("users"), context.get("user", ""), "user")
    creds = Credentials()
    creds.server = str(cluster.get("server") or "").rstrip("/")
    if not creds.server.startswith("https://"):
        raise KubeconfigError("the cluster server must be an https:// URL")

    def file_of(value: Any) -> str:
        return "" if not value else os.path.join(base, str(value))

    def data_of(value: Any) -> bytes:
        return base64.b64decode(value) if value else b""

    creds.ca_file = file_of(cluster.get("certificate-authority"))
    creds.ca_data = data_of(cluster.get("certificate-authority-data"))
    creds.insecure = bool(cluster.get("insecure-skip-tls-verify"))
    creds.cert_file = file_of(user.get("client-certificate"))
    creds.key_file = file_of(user.get("client-key"))
    creds.cert_data = data_of(user.get("client-certificate-data"))
    creds.key_data = data_of(user.get("client-key-data"))
    creds.token = str(user.get("token") or "")
    return creds
