"""A containerd CNI `conf_template`: containerd writes the node's pod CIDR into the config.

containerd does not pass the node's podCIDR to plugins (no `ipRanges` from
its CRI), but when kubelet tells it the CIDR (CRI UpdateRuntimeConfig) it
renders `[plugins."io.containerd.grpc.v1.cri".cni] conf_template` with Go's
text/template (fields PodCIDR, PodCIDRRanges, Routes; no extra functions) into
`conf_dir/10-containerd-net.conflist` -- but only while no CNI config is
loaded from conf_dir ("Network plugin is ready, skip generating cni config
from template"): so with a template the installer keeps its own conflist
beside the template, outside conf_dir.

The template is the installed conflist with `"podCIDRs": [{{range}}...]`
added to our plugin entry: the network keeps the configured subnet (the
cluster CIDR: forwarding, NAT and the node DNS cover it), and the plugin
takes each pod's address from the node's IPv4 range in it (ipranges.py),
exactly as with the runtime's `ipRanges`. IPv6 ranges are skipped, so a
dual-stack CIDR list in any order works.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..conflist import our_plugin

# what containerd names the rendered file (pkg/cri/server: cniConfigFileName)
RENDERED_NAME = "10-containerd-net.conflist"
TEMPLATE_NAME = "smarter-cni-containerd.conflist.tmpl"
K3S_CONTAINERD_TMPL = "/var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl"
_PLACEHOLDER = "@@POD_CIDRS@@"
# a JSON list of the node's ranges, for Go's text/template
POD_CIDRS_ACTION = '[{{range $i, $r := .PodCIDRRanges}}{{if $i}}, {{end}}"{{$r}}"{{end}}]'


def default_path(conf_dir: str) -> str:
    """Next to the conf dir, never in it: libcni would load a .conflist* file there."""
    return os.path.join(os.path.dirname(conf_dir.rstrip("/")) or "/", TEMPLATE_NAME)


def template_text(conflist: dict[str, Any]) -> str:
    """The conflist as a containerd conf_template (Go text/template source)."""
    rendered = json.loads(json.dumps(conflist))
    our_plugin(rendered)["podCIDRs"] = _PLACEHOLDER
    text = json.dumps(rendered, indent=2) + "\n"
    return text.replace(json.dumps(_PLACEHOLDER), POD_CIDRS_ACTION)


def config_lines(path: str, k3s: bool) -> list[str]:
    """What the operator adds to containerd's config for the template to be used."""
    section = '[plugins."io.containerd.grpc.v1.cri".cni]'
    if k3s:
        return [f"k3s: put these lines in {K3S_CONTAINERD_TMPL} and restart k3s "
                "(the base template needs k3s v1.24.17+, v1.25.13+, v1.26.8+, v1.27.5+, "
                "v1.28.1+ or later):",
                '  {{ template "base" . }}', "", f"  {section}",
                f'    conf_template = "{path}"']
    return ["containerd: add to /etc/containerd/config.toml (version = 2; containerd 2.x "
            "converts it) and restart containerd:",
            f"  {section}", f'    conf_template = "{path}"']


def is_ours(path: str) -> bool:
    """A template we wrote or a config containerd rendered from it: a smarter-cni entry."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return '"type": "smarter-cni"' in head and '"podCIDRs"' in head


def is_plain_ours(path: str) -> bool:
    """The installer's own conflist (no template in it)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            data = json.load(handle)
        return any(isinstance(p, dict) and p.get("type") in ("smarter-cni", "c2d")
                   for p in data.get("plugins") or [])
    except (OSError, ValueError, AttributeError):
        return False


def other_configs(conf_dir: str) -> list[str]:
    """CNI configs in conf_dir other than containerd's rendering of our template."""
    try:
        names = sorted(os.listdir(conf_dir))
    except OSError:
        return []
    return [n for n in names if n.endswith((".conf", ".conflist", ".json"))
            and not n.startswith(".") and not (n == RENDERED_NAME
                                                and is_ours(os.path.join(conf_dir, n)))]
