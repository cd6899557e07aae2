"""Pod name records: what the plugin records at ADD and the DNS service serves.

The plugin writes pod identity (name, namespace, hostname) into the
attachment records of `store`; this module turns those records into DNS
names. Only RFC 1123 labels ever become names, so a crafted pod name or
annotation can neither inject a record nor break the file.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterable

    from .store import Attachment


MAX_LABEL = 63
_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def is_label(text: Any) -> bool:
    """True for a lowercase RFC 1123 label: a-z, 0-9, '-', not at either end, <= 63."""
    return (
        isinstance(text, str)
        and 0 < len(text) <= MAX_LABEL
        and set(text) <= _LABEL_CHARS
        and text[0] != "-"
        and text[-1] != "-"
    )


def clean_label(text: Any) -> str:
    """The label lowercased if it is one, else '' (never a partial or repaired name)."""
    if not isinstance(text, str):
        return ""
    lowered = text.lower()
    return lowered if is_label(lowered) else ""


def pod_identity(name: str, namespace: str, uid: str = "", hostname: str = "") -> dict[str, str]:
    """What a record keeps about its pod; unusable names are dropped here, once."""
    return {
        "name": clean_label(name),
        "namespace": clean_label(namespace),
        "uid": uid if len(uid) <= 128 and uid.isprintable() else "",
        "hostname": clean_label(hostname),
    }


def names_for(pod: dict[str, Any], domain: str) -> list[str]:
    """Every name a pod answers to, lowercased, without the trailing dot."""
    labels = []
    for key in ("name", "hostname"):
        label = clean_label(pod.get(key))
        if label and label not in labels:
            labels.append(label)
    namespace = clean_label(pod.get("namespace"))
    names = []
    for label in labels:
        names.append(label)
        if namespace:
            names.append(f"{label}.{namespace}")
            names.append(f"{label}.{namespace}.svc.{domain}")
    return names


def record_addresses(record: Attachment) -> list[str]:
    """IPv4 addresses (without prefix) of one attachment record."""
    out = []
    for cidr in record.get("ips") or []:
        if isinstance(cidr, str) and ":" not in cidr:
            out.append(cidr.split("/", 1)[0])
    return out


def record_addresses6(record: Attachment) -> list[str]:
    """IPv6 addresses (without prefix) of one attachment record (dual-stack, subnet6)."""
    out = []
    for cidr in record.get("ips") or []:
        if isinstance(cidr, str) and ":" in cidr:
            out.append(cidr.split("/", 1)[0])
    return out


def build_tables(
    records: Iterable[dict[str, Any]], domain: str
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(name -> addresses, address -> names) for every ready record."""
    forward: dict[str, list[str]] = {}
    reverse: dict[str, list[str]] = {}
    for record in records:
        if not isinstance(record, dict) or not record.get("ready"):
            continue
        pod = record.get("pod")
        if not isinstance(pod, dict):
            continue
        addresses = record_addresses(record)
        names = names_for(pod, domain)
        for name in names:
            bucket = forward.setdefault(name, [])
            bucket.extend(a for a in addresses if a not in bucket)
        for address in addresses + record_addresses6(record):  # PTR for IPv6 too
            fqdns = [n for n in names if n.endswith("." + domain)]
            reverse.setdefault(address, []).extend(fqdns or names[:1])
    return forward, reverse

