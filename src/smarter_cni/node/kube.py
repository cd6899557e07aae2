"""The installer's Kubernetes options: the node's pod CIDR from the API server.

k3s allocates each node its own podCIDR (node.spec.podCIDRs); with
`--pod-cidr-from-node` the installer writes it into the config as the subnet,
so no two nodes hand out the same pod address. The same CIDR can also arrive
through the runtime (ipranges.py) or containerd's conf_template (containerd.py).
"""

from __future__ import annotations

import os
import socket
from typing import Any

from .console import CLIError

# k3s writes its admin kubeconfig here on servers (K3S_KUBECONFIG_MODE sets its mode)
K3S_KUBECONFIG = "/etc/rancher/k3s/k3s.yaml"


def default_node_name() -> str:
    """kubelet's default node name: the host name, lower-cased."""
    return socket.gethostname().lower()


def options_from_args(args: Any) -> dict[str, Any]:
    kubeconfig = getattr(args, "kubeconfig", None)
    from_node = bool(getattr(args, "pod_cidr_from_node", False))
    if not kubeconfig and from_node and getattr(args, "k3s", False) \
            and os.path.isfile(K3S_KUBECONFIG):
        kubeconfig = K3S_KUBECONFIG
    if from_node and not kubeconfig:
        raise CLIError("--pod-cidr-from-node needs --kubeconfig PATH (a kubeconfig that may "
                       "`get` this node)", "on a k3s server give /etc/rancher/k3s/k3s.yaml")
    if from_node and getattr(args, "subnet", None):
        raise CLIError("--subnet and --pod-cidr-from-node both set the subnet",
                       "give one of them")
    if kubeconfig and not os.path.isfile(kubeconfig):
        raise CLIError(f"--kubeconfig {kubeconfig} does not exist", "give the kubeconfig's path")
    template = getattr(args, "containerd_template", None)
    if template and template != "auto":
        template = os.path.abspath(template)
    return {"kubeconfig": os.path.abspath(kubeconfig) if kubeconfig else None,
            "containerd_template": template,
            "pod_cidr_from_node": from_node,
            "node_name": getattr(args, "node_name", None) or default_node_name()}


def subnet_from_node(opts: Any) -> str:
    """The node's IPv4 podCIDR, or a CLIError that says what to fix."""
    from ..kubeapi import APIError, node_pod_cidr

    try:
        return node_pod_cidr(opts.kubeconfig, opts.node_name)
    except APIError as err:
        if err.fix:
            fix = err.fix
        elif err.status == 404:
            fix = "give the node's name with --node-name (`kubectl get nodes` lists them)"
        elif err.status in (401, 403):
            fix = "use a kubeconfig whose user may get nodes (e.g. k3s' /etc/rancher/k3s/k3s.yaml)"
        else:
            fix = ("check that the API server runs and the kubeconfig names it, or give the "
                   "node's CIDR with --subnet")
        raise CLIError(f"cannot read the pod CIDR of node {opts.node_name}: {err}", fix) from None
