"""Offline checks of deploy/: the DaemonSet manifest, the Helm chart, the Dockerfile, the configs.

No cluster, no `helm` binary (neither Debian nor PyPI ships one): the
chart's templates are rendered by a small renderer below for the subset of
Go template syntax they use (values, `if`/`else`/`end`, `eq`, `quote`,
`default`, `toYaml | nindent`), and a template using anything else fails
the test. The rendered YAML is then checked against the Kubernetes fields a
CNI DaemonSet needs, and against the installer's own options.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from smarter_cni import __version__
from smarter_cni.cli import build_parser
from smarter_cni.conflist import default_conflist
from smarter_cni.dns.service import build_parser as dns_parser
from smarter_cni.netconf import parse_netconf

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "smarter-cni"


# ---------------------------------------------------------------- a tiny Go-template renderer

_ACTION = re.compile(r"(\{\{-?\s*)(.*?)(\s*-?\}\})", re.S)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    for match in _ACTION.finditer(text):
        chunk = text[pos:match.start()]
        if match.group(1).startswith("{{-"):
            chunk = chunk.rstrip()
        out.append(("text", chunk))
        out.append(("action", match.group(2).strip()))
        pos = match.end()
        if match.group(3).endswith("-}}"):
            rest = text[pos:]
            pos += len(rest) - len(rest.lstrip())
    out.append(("text", text[pos:]))
    return out


def _lookup(path: str, ctx: dict[str, Any]) -> Any:
    value: Any = ctx
    for part in path.lstrip(".").split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _term(term: str, ctx: dict[str, Any]) -> Any:
    term = term.strip()
    if term.startswith('"'):
        return json.loads(term)
    if term.startswith("."):
        return _lookup(term, ctx)
    raise AssertionError(f"unsupported template term {term!r}")


def _expr(expr: str, ctx: dict[str, Any]) -> Any:
    stages = [s.strip() for s in expr.split("|")]
    words = shlex.split(stages[0], posix=False)
    if words[0] == "eq":
        value: Any = _term(words[1], ctx) == _term(words[2], ctx)
    elif words[0] == "toYaml":
        value = yaml.safe_dump(_term(words[1], ctx), default_flow_style=False).rstrip("\n")
    else:
        assert len(words) == 1, f"unsupported expression {expr!r}"
        value = _term(words[0], ctx)
    for stage in stages[1:]:
        name, *args = shlex.split(stage, posix=False)
        if name == "quote":
            value = json.dumps("" if value is None else str(value))
        elif name == "default":
            value = value if value else _term(args[0], ctx)
        elif name == "nindent":
            pad = " " * int(args[0])
            value = "\n" + "\n".join(pad + line if line else line for line in str(value).split("\n"))
        else:
            raise AssertionError(f"unsupported template function {name!r}")
    return value


def render(text: str, ctx: dict[str, Any]) -> str:
    out: list[str] = []
    stack: list[tuple[bool, bool]] = []  # (parent emitting, this branch taken)

    def emitting() -> bool:
        return all(parent and taken for parent, taken in stack)

    for kind, value in _tokens(text):
        if kind == "text":
            if emitting():
                out.append(value)
        elif value.startswith("if "):
            stack.append((emitting(), bool(_expr(value[3:], ctx)) if emitting() else False))
        elif value == "else":
            parent, taken = stack.pop()
            stack.append((parent, not taken))
        elif value == "end":
            stack.pop()
        elif value.startswith("/*"):
            continue
        elif emitting():
            result = _expr(value, ctx)
            out.append("" if result is None else str(result))
    assert not stack, "unbalanced if/end"
    return "".join(out)


def chart_context(**overrides: Any) -> dict[str, Any]:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    values.update(overrides)
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    return {"Values": values, "Release": {"Name": "smarter-cni", "Namespace": "kube-system"},
            "Chart": {"Name": chart["name"], "Version": chart["version"],
                      "AppVersion": chart["appVersion"]}}


def render_chart(**overrides: Any) -> dict[str, Any]:
    text = render((CHART / "templates" / "daemonset.yaml").read_text(), chart_context(**overrides))
    return yaml.safe_load(text)


def render_rbac(**overrides: Any) -> dict[str, dict[str, Any]]:
    """templates/rbac.yaml's documents by kind (none unless inCluster)."""
    text = render((CHART / "templates" / "rbac.yaml").read_text(), chart_context(**overrides))
    return {d["kind"]: d for d in yaml.safe_load_all(text) if d}


def test_the_renderer_handles_what_the_templates_use():
    ctx = {"Values": {"a": "x", "m": "docker", "l": {"k": "v"}, "e": ""}, "Chart": {"V": "1"}}
    assert render("{{ .Values.a }}-{{ .Values.a | quote }}", ctx) == 'x-"x"'
    assert render("a\n  {{- if eq .Values.m \"docker\" }} yes{{ end }}", ctx) == "a yes"
    assert render("{{ if .Values.e }}no{{ else }}else{{ end }}", ctx) == "else"
    assert render("k:\n  {{- toYaml .Values.l | nindent 2 }}", ctx) == "k:\n  k: v"
    assert render("{{ .Values.e | default .Chart.V }}", ctx) == "1"
    with pytest.raises(AssertionError):
        render("{{ include \"x\" . }}", ctx)


# ---------------------------------------------------------------- shared checks

def _check_daemonset(doc: dict[str, Any]) -> dict[str, Any]:
    """The fields a node-level CNI installer needs; returns the container."""
    assert doc["apiVersion"] == "apps/v1" and doc["kind"] == "DaemonSet"
    assert doc["metadata"]["namespace"] == "kube-system"
    spec = doc["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    pod = spec["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["nodeSelector"] == {"smarter-cni": "enabled"}
    assert {"operator": "Exists"} in pod["tolerations"]  # runs while the node is NotReady
    assert pod["priorityClassName"] == "system-node-critical"
    (container,) = pod["containers"]
    assert container["securityContext"]["privileged"] is True
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    assert set(mounts) <= set(volumes), "every mount needs a volume"
    for name in ("cni-bin", "cni-conf", "state", "lib"):
        assert mounts[name] == volumes[name], f"{name} must sit at the same path as on the host"
    assert volumes["state"] == "/run/smarter-cni"
    return container


def _install_args(container: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(install argv, dns argv) from the container's shell command."""
    assert container["command"] == ["/bin/sh", "-c"]
    script = " ".join(container["args"])
    install, _, dns = script.partition("&&")
    install_argv, dns_argv = shlex.split(install), shlex.split(dns)
    assert install_argv[:2] == ["smarter-cni", "install"]
    assert dns_argv[:3] == ["exec", "smarter-cni", "dns"]
    return install_argv[2:], dns_argv[3:]


def _check_probes(container: dict[str, Any], host: str, port: int = 9153) -> None:
    """Liveness and readiness ask the node DNS's own endpoint (dns/health.py)."""
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert (get["host"], get["port"], get["path"]) == (host, port, path), (probe, get)
        assert container[probe]["timeoutSeconds"] >= 2  # /readyz waits up to 1 s for a query


def _parses(argv: list[str]) -> Any:
    """The installer's own parser must accept exactly these options."""
    return build_parser().parse_args(["install", *argv])


# ---------------------------------------------------------------- the plain manifest

def manifest_docs() -> dict[str, dict[str, Any]]:
    """deploy/daemonset.yaml's documents by kind (one of each)."""
    docs = [d for d in yaml.safe_load_all((DEPLOY / "daemonset.yaml").read_text()) if d]
    kinds = [d["kind"] for d in docs]
    assert len(kinds) == len(set(kinds)), kinds
    return {d["kind"]: d for d in docs}


def test_daemonset_manifest():
    docs = manifest_docs()
    assert set(docs) == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"}
    doc = docs["DaemonSet"]
    container = _check_daemonset(doc)
    install, dns = _install_args(container)
    args = _parses(install)
    assert args.no_selftest and args.no_dns_service
    assert args.mode == "bridge" and args.dns_ip == "169.254.0.2"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert args.cni_bin_dir == mounts["cni-bin"] == "/opt/cni/bin"
    assert args.cni_conf_dir == mounts["cni-conf"] == "/etc/cni/net.d"
    assert args.plugin_lib.startswith(mounts["lib"] + "/")
    assert dns == ["--config", "/etc/cni/net.d/10-smarter-cni.conflist", "--metrics", "9153"]
    assert dns_parser().parse_args(dns).metrics == "9153"  # the service's own parser takes it
    assert container["image"].endswith(":" + __version__)
    _check_probes(container, args.dns_ip)


# ---------------------------------------------------------------- the chart

def test_chart_metadata_matches_the_package():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "smarter-cni"
    assert chart["appVersion"] == __version__


def test_chart_values_are_the_installer_options():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    option_for = {"mode": "mode", "subnet": "subnet", "gateway": "gateway", "dnsIp": "dns_ip",
                  "bridge": "bridge", "network": "network", "domain": "domain",
                  "cniBinDir": "cni_bin_dir", "cniConfDir": "cni_conf_dir",
                  "pluginPython": "plugin_python", "pluginLib": "plugin_lib"}
    install = build_parser()._subparsers._group_actions[0].choices["install"]
    dests = {a.dest for a in install._actions}
    for key, dest in option_for.items():
        assert key in values, key
        assert dest in dests, dest


def test_chart_passes_a_kubeconfig_to_the_dns_service_for_service_names():
    plain = render_chart()
    _, dns = _install_args(plain["spec"]["template"]["spec"]["containers"][0])
    assert "--kubeconfig" not in dns
    doc = render_chart(kubeconfig="/etc/rancher/k3s/k3s.yaml", kubeconfigDir="/etc/rancher/k3s")
    container = doc["spec"]["template"]["spec"]["containers"][0]
    _, dns = _install_args(container)
    args = dns_parser().parse_args(dns)  # the service's own parser takes them
    assert args.kubeconfig == "/etc/rancher/k3s/k3s.yaml" and args.service_cidr == "10.43.0.0/16"
    mount = {m["name"]: m for m in container["volumeMounts"]}["kubeconfig"]
    assert mount == {"name": "kubeconfig", "mountPath": "/etc/rancher/k3s", "readOnly": True}
    volume = {v["name"]: v for v in doc["spec"]["template"]["spec"]["volumes"]}["kubeconfig"]
    assert volume["hostPath"] == {"path": "/etc/rancher/k3s", "type": "Directory"}


def test_chart_renders_like_the_manifest_by_default():
    doc = render_chart()
    container = _check_daemonset(doc)
    install, dns = _install_args(container)
    args = _parses(install)
    assert args.mode == "bridge" and args.bridge == "smarter0" and args.subnet is None
    assert container["image"] == f"smarter-cni:{__version__}"
    assert "docker-socket" not in {v["name"] for v in doc["spec"]["template"]["spec"]["volumes"]}
    assert dns == ["--config", "/etc/cni/net.d/10-smarter-cni.conflist", "--metrics", "9153"]
    plain = manifest_docs()["DaemonSet"]
    assert plain["spec"]["template"]["spec"]["volumes"] == \
        doc["spec"]["template"]["spec"]["volumes"]
    _check_probes(container, "169.254.0.2")
    plain_container = plain["spec"]["template"]["spec"]["containers"][0]
    for probe in ("livenessProbe", "readinessProbe"):
        assert plain_container[probe] == container[probe]


def test_chart_probes_follow_the_dns_address_and_metrics_port():
    container = _check_daemonset(render_chart(mode="docker"))
    _check_probes(container, "172.38.0.2")  # docker mode's default DNS address
    container = _check_daemonset(render_chart(dnsIp="169.254.20.10", metricsPort=9253))
    _check_probes(container, "169.254.20.10", 9253)
    assert _install_args(container)[1][-2:] == ["--metrics", "9253"]


def test_chart_values_reach_the_installer():
    doc = render_chart(mode="docker", subnet="172.40.0.0/16", dnsIp="172.40.0.2",
                       network="edge", cniBinDir="/var/lib/cni/bin", cniConfDir="/etc/cni/conf",
                       image={"repository": "registry.local/smarter-cni", "tag": "9.9",
                              "pullPolicy": "Always"})
    container = _check_daemonset(doc)
    args = _parses(_install_args(container)[0])
    assert (args.mode, args.subnet, args.dns_ip, args.network) == \
        ("docker", "172.40.0.0/16", "172.40.0.2", "edge")
    assert (args.cni_bin_dir, args.cni_conf_dir) == ("/var/lib/cni/bin", "/etc/cni/conf")
    assert container["image"] == "registry.local/smarter-cni:9.9"
    assert container["imagePullPolicy"] == "Always"
    volumes = {v["name"]: v["hostPath"] for v in doc["spec"]["template"]["spec"]["volumes"]}
    assert volumes["docker-socket"] == {"path": "/var/run/docker.sock", "type": "Socket"}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["DOCKER_HOST"] == "unix:///var/run/docker.sock"
    _check_probes(container, "172.40.0.2")


# ---------------------------------------------------------------- image and configs

def test_dockerfile():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    for platform in ("linux/arm/v7", "linux/arm64", "linux/amd64"):
        assert platform in text
    assert "iproute2" in text and "iptables" in text
    assert re.search(r'^ENTRYPOINT \["smarter-cni"\]$', text, re.M)
    for source in re.findall(r"^COPY (.+) /build/", text, re.M):
        for name in source.split():
            assert (ROOT / name).exists(), f"Dockerfile copies {name}, which is missing"


def test_bridge_conflist_is_the_installer_default():
    shipped = json.loads((DEPLOY / "10-smarter-cni.conflist").read_text())
    assert shipped == default_conflist("bridge")
    plugin = dict(shipped["plugins"][0], name=shipped["name"], cniVersion=shipped["cniVersion"])
    conf = parse_netconf(plugin)
    assert (conf.mode, conf.cidr(), conf.gateway_text(), conf.dns_address, conf.bridge) == \
        ("bridge", "10.42.0.0/16", "10.42.0.1", "169.254.0.2", "smarter0")


def test_docker_conflist_parses_when_present():
    path = DEPLOY / "10-smarter-cni-docker.conflist"
    if not path.exists():
        pytest.skip("docker-mode template not shipped yet")
    shipped = json.loads(path.read_text())
    plugin = next(p for p in shipped["plugins"] if p["type"] in ("smarter-cni", "c2d"))
    conf = parse_netconf(dict(plugin, name=shipped["name"], cniVersion=shipped["cniVersion"]))
    assert conf.mode == "docker" and conf.dns_address == "172.38.0.2"


def test_docker_conflist_matches_the_installer_fallback():
    path = DEPLOY / "10-smarter-cni-docker.conflist"
    if not path.exists():
        pytest.skip("docker-mode template not shipped yet")
    shipped = json.loads(path.read_text())
    fallback = default_conflist("docker")
    assert shipped["name"] == fallback["name"]
    keys = ("mode", "network", "subnet", "gateway", "dnsAddress", "clusterDomain")
    assert {k: shipped["plugins"][0][k] for k in keys} == \
        {k: fallback["plugins"][0][k] for k in keys}


# ---------------------------------------------------------------- in-cluster credentials

def _check_rbac(docs: dict[str, dict[str, Any]], name: str, namespace: str) -> None:
    """A ServiceAccount allowed exactly what the two watches ask: get, list, watch on
    services and on endpointslices (headless Services' endpoints)."""
    account = docs["ServiceAccount"]
    assert (account["apiVersion"], account["metadata"]["name"],
            account["metadata"]["namespace"]) == ("v1", name, namespace)
    role = docs["ClusterRole"]
    assert role["apiVersion"] == "rbac.authorization.k8s.io/v1"
    assert role["rules"] == [{"apiGroups": [""], "resources": ["services"],
                              "verbs": ["get", "list", "watch"]},
                             {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                              "verbs": ["get", "list", "watch"]}]
    binding = docs["ClusterRoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                  "kind": "ClusterRole", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name,
                                    "namespace": namespace}]


def test_the_cluster_role_covers_every_path_the_watches_ask():
    """The API paths the DNS service lists and watches, as (apiGroup, resource): what the
    ClusterRole must grant (a new watch without its RBAC would be a 403 on every node)."""
    from smarter_cni.dns import endpoints, services

    asked = set()
    for path in (services.PATH, endpoints.PATH):
        parts = path.strip("/").split("/")
        asked.add(("", parts[2]) if parts[0] == "api" else (parts[1], parts[3]))
    granted = {(group, resource) for rule in manifest_docs()["ClusterRole"]["rules"]
               for group in rule["apiGroups"] for resource in rule["resources"]}
    assert asked == granted == {("", "services"), ("discovery.k8s.io", "endpointslices")}


def test_manifest_carries_the_rbac_for_in_cluster_service_names():
    docs = manifest_docs()
    _check_rbac(docs, "smarter-cni", "kube-system")
    pod = docs["DaemonSet"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "smarter-cni"
    assert pod["automountServiceAccountToken"] is False, "Service names stay off by default"
    assert docs["ClusterRole"]["rules"] == render_rbac(inCluster=True)["ClusterRole"]["rules"]
    # the edit the manifest's header describes is what the service's parser takes
    header = (DEPLOY / "daemonset.yaml").read_text().split("apiVersion:", 1)[0]
    line = next(x for x in header.splitlines() if "--in-cluster" in x)
    args = dns_parser().parse_args(line.lstrip("# ").split())
    assert args.in_cluster and args.api_server == "https://127.0.0.1:6443"


def test_chart_in_cluster_renders_a_service_account_and_the_dns_options():
    assert render_rbac() == {}, "no RBAC objects unless inCluster"
    plain = render_chart()["spec"]["template"]["spec"]
    assert plain["automountServiceAccountToken"] is False and "serviceAccountName" not in plain
    _check_rbac(render_rbac(inCluster=True), "smarter-cni", "kube-system")
    doc = render_chart(inCluster=True)
    pod = doc["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "smarter-cni"
    assert pod["automountServiceAccountToken"] is True
    _, dns = _install_args(_check_daemonset(doc))
    args = dns_parser().parse_args(dns)
    assert args.in_cluster and args.kubeconfig is None
    assert args.api_server == "https://127.0.0.1:6443", "k3s' server on the node by default"
    assert args.service_cidr == "10.43.0.0/16"
    assert args.service_account_dir == "/var/run/secrets/kubernetes.io/serviceaccount"
    # an empty apiServer: the kubernetes Service from the pod's environment
    _, dns = _install_args(render_chart(inCluster=True, apiServer="")["spec"]["template"]
                           ["spec"]["containers"][0])
    assert "--api-server" not in dns and "--in-cluster" in dns


def test_chart_in_cluster_wins_over_a_kubeconfig_which_then_is_not_mounted():
    doc = render_chart(inCluster=True, kubeconfig="/etc/rancher/k3s/k3s.yaml",
                       kubeconfigDir="/etc/rancher/k3s", apiServer="https://[fd00::10]:6443")
    pod = doc["spec"]["template"]["spec"]
    _, dns = _install_args(pod["containers"][0])
    args = dns_parser().parse_args(dns)
    assert args.in_cluster and args.kubeconfig is None
    assert args.api_server == "https://[fd00::10]:6443"
    assert "kubeconfig" not in {v["name"] for v in pod["volumes"]}
    assert "kubeconfig" not in {m["name"] for m in pod["containers"][0]["volumeMounts"]}


def test_chart_notes_render_with_in_cluster():
    text = render((CHART / "templates" / "NOTES.txt").read_text(), chart_context(inCluster=True))
    assert "ServiceAccount\nkube-system/smarter-cni" in text
    assert "https://127.0.0.1:6443" in text
    assert "ServiceAccount" not in render((CHART / "templates" / "NOTES.txt").read_text(),
                                          chart_context())
