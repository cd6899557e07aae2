"""Docker mode: Docker connects the pod sandbox to a user-defined network.

cri-dockerd creates each pod's sandbox container with network mode `none`
and the pod's hostname, then calls us with CNI_CONTAINERID = the sandbox's
Docker ID and CNI_NETNS = /proc/<pid>/ns/net. ADD swaps `none` for the
network, with the hostname and pod name as aliases (Docker's embedded DNS
resolves only names given as aliases), and returns the address Docker's
IPAM chose. Each attachment is also recorded in the node store so the node
DNS service answers for these pods too.

A record is written (not ready) before anything changes in Docker, so a
crashed or timed-out ADD is still found and undone by DEL or GC.
"""

from __future__ import annotations

import os

from .. import registry, store
from ..cni.errors import (
    CHECK_FAILED,
    DOCKER_FAILURE,
    INVALID_NETWORK_CONFIG,
    PLUGIN_NOT_AVAILABLE,
    UNKNOWN_CONTAINER,
    CNIError,
)
from ..cni.result import Interface, IPConfig, Result, Route
from ..docker_api import DockerAPIError, DockerClient, DockerUnavailable, quote
from . import pause_between_phases

# The installer's network calls live in docker_network; their names stay importable here.
from .docker_network import (  # noqa: F401
    MANAGED_LABEL,
    dns_reservable,
    ensure_network,
    network_conflicts,
    unreserved_dns_error,
)
from .docker_sandbox import (
    find_by_netns,
    find_sandbox,
    host_veth,
    hostname_of,
    inode,
    link_mac,
    link_master,
    pod_ifname,
    require_same_netns,
    running_pid,
    same_inode,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..cni.request import Request
    from ..netconf import NetConf

DEFAULT_TIMEOUT = 5.0   # the whole plugin run's budget for dockerd (config "dockerTimeout")
CLEANUP_TIMEOUT = 2.0   # extra budget to undo a half-done ADD after the main one ran out
# Once dockerd has answered, the connect itself may queue behind a burst of other
# connects (64 at once take 6-8 s here): a live dockerd gets this long (config
# "dockerConnectTimeout"); a dead or wedged one is still caught by dockerTimeout.
DEFAULT_CONNECT_TIMEOUT = 30.0


def _seconds(conf: NetConf, key: str, default: float) -> float:
    value = conf.raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 300:
        raise CNIError(INVALID_NETWORK_CONFIG,
                       f"invalid network config: {key} must be seconds in (0, 300]")
    return float(value)


def client(conf: NetConf, timeout: float | None = None) -> DockerClient:
    if timeout is None:
        timeout = _seconds(conf, "dockerTimeout", DEFAULT_TIMEOUT)
    return DockerClient(conf.docker_socket, timeout)


# ---------------------------------------------------------------- ADD

def add(request: Request, conf: NetConf) -> Result:
    docker = client(conf)
    connect_budget = _seconds(conf, "dockerConnectTimeout", DEFAULT_CONNECT_TIMEOUT)
    container = find_sandbox(docker, request)
    if container is None:
        raise CNIError(UNKNOWN_CONTAINER,
                       f"dockerd knows no container {request.container_id[:64]} and none "
                       f"running in netns {request.netns}")
    docker_id = container["Id"]
    pid = running_pid(container)
    require_same_netns(request.netns, pid, docker_id)
    hostname = hostname_of(container)
    aliases = pod_aliases(hostname, request.pod_name)
    key = store.attachment_key(conf.name, request.container_id, request.ifname)
    pod = registry.pod_identity(request.pod_name, request.pod_namespace,
                                request.args.get("K8S_POD_UID", ""), hostname)
    record = store.new_attachment(request, conf.name, "docker", pod, conf.domain,
                                  docker_id=docker_id, docker_network=conf.docker_network)

    endpoint = _endpoint(container, conf.docker_network)
    if endpoint is None:
        require_network(docker, conf)
    # Recorded (not ready) before anything changes in Docker, and on a re-ADD of a
    # connected sandbox too: the completion below then knows the record is its own.
    with store.Transaction() as tx:
        tx.attachments[key] = record
        _claim(tx, conf)
        tx.dirty = True
    if endpoint is None:
        try:
            docker.extend(connect_budget)  # dockerd is alive: let the connect queue
            endpoint = _connect(docker, conf, container, aliases)
        except BaseException:
            _undo_add(docker, conf, key, docker_id)
            raise
    try:
        result = _result(request, conf, endpoint, pid)
    except BaseException:
        _undo_add(docker, conf, key, docker_id)
        raise
    pause_between_phases()
    with store.Transaction() as tx:
        current = tx.attachments.get(key)
        # Only our own record, still there (its address and names would come back).
        mine = store.same_record(current, record, "docker_id")
        if mine:
            record["ips"] = [ip.address for ip in result.ips]  # IPv4, then IPv6 if any
            record["gateway"] = result.ips[0].gateway
            pod_iface = result.interfaces[-1]
            record["mac"] = pod_iface.mac
            record["pod_ifname"] = pod_iface.name
            record["host_ifname"] = result.interfaces[-2].name if len(result.interfaces) > 1 \
                else ""
            record["ready"] = True
            tx.attachments[key] = record
            tx.dirty = True
        # A newer ADD of the same sandbox owns the record (and the endpoint) now.
        newer = current is not None and not mine and current.get("docker_id") == docker_id
    if not mine:
        if newer:
            left = "a newer ADD of the same sandbox holds the attachment now"
        else:
            _abandon_add(docker, conf, docker_id)
            left = (f"it was disconnected from docker network {conf.docker_network} again, "
                    "nothing is left to clean up")
        raise CNIError(UNKNOWN_CONTAINER,
                       f"container {request.container_id[:12]}/{request.ifname} on {conf.name} "
                       f"was deleted (DEL or GC) while its ADD was running; {left}")
    return result


def _abandon_add(docker: DockerClient, conf: NetConf, docker_id: str) -> None:
    """Disconnect what an ADD connected after its record was removed (not ours to touch)."""
    docker.extend(CLEANUP_TIMEOUT)
    try:
        disconnect(docker, conf.docker_network, docker_id)
    except CNIError:
        pass  # the DEL or GC that removed the record disconnected it, or will on retry


def _claim(tx: store.Transaction, conf: NetConf) -> None:
    """Note that this node uses the Docker network (see claim_network)."""
    marker = network_marker(conf)
    if tx.networks.get(conf.name) != marker:
        tx.networks[conf.name] = marker


def network_marker(conf: NetConf) -> dict[str, Any]:
    return {"mode": "docker", "docker_network": conf.docker_network, "cidr": conf.cidr(),
            "gateway": conf.gateway_text(), "dns": conf.dns_address}


def claim_network(conf: NetConf, directory: str | None = None) -> None:
    """For the installer, after ensure_network: the DNS service's reconciler recreates
    only a Docker network this node has claimed (install or a pod's ADD)."""
    with store.Transaction(directory) as tx:
        _claim(tx, conf)
        tx.dirty = True


def require_network(docker: DockerClient, conf: NetConf) -> dict[str, Any]:
    """The network, if it exists and never hands the node DNS address to a pod.

    One GET /networks/{name} before a connect (an idempotent re-ADD skips it);
    it also turns a missing network into a clear error before anything changes.
    """
    network = docker.inspect_network(conf.docker_network)
    if network is None:
        raise CNIError(DOCKER_FAILURE,
                       f"docker network {conf.docker_network} does not exist; create it with "
                       f"`smarter-cni install --mode docker` (or docker network create)")
    problem = unreserved_dns_error(network, conf)
    if problem is not None:
        raise problem
    return network


_ALIAS_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def pod_aliases(hostname: str, pod_name: str) -> list[str]:
    """Network aliases: what Docker's embedded DNS will answer for this pod.

    Only hostname-like strings: a crafted CNI_ARGS value must neither make
    Docker refuse the connect nor become a name in its DNS.
    """
    aliases = []
    for name in (hostname, pod_name):
        if name and len(name) <= 253 and set(name) <= _ALIAS_CHARS and name not in aliases:
            aliases.append(name)
    return aliases


def _endpoint(container: dict[str, Any], network: str) -> dict[str, Any] | None:
    networks = (container.get("NetworkSettings") or {}).get("Networks") or {}
    endpoint = networks.get(network)
    if isinstance(endpoint, dict) and endpoint.get("IPAddress"):
        return endpoint
    return None


def _connect(docker: DockerClient, conf: NetConf, container: dict[str, Any],
             aliases: list[str]) -> dict[str, Any]:
    """Swap `none` for the network; return the endpoint Docker made."""
    docker_id = container["Id"]
    networks = (container.get("NetworkSettings") or {}).get("Networks") or {}
    if "none" in networks:
        # Docker refuses to add a network to a container still in `none` mode.
        disconnect(docker, "none", docker_id)
    path = f"/networks/{quote(conf.docker_network)}/connect"
    status, data = docker.request("POST", path, {
        "Container": docker_id, "EndpointConfig": {"Aliases": aliases}})
    if status == 404 and "network" in _message(data):
        raise CNIError(DOCKER_FAILURE,
                       f"docker network {conf.docker_network} does not exist; create it with "
                       f"`smarter-cni install` (or docker network create)")
    if status not in (200, 201, 204):
        raise DockerAPIError(status, _message(data),
                             f"connect {docker_id[:12]} to network {conf.docker_network}")
    endpoint = _endpoint(docker.inspect_container(docker_id) or {}, conf.docker_network)
    if endpoint is None:
        raise CNIError(DOCKER_FAILURE, f"dockerd connected {docker_id[:12]} to "
                       f"{conf.docker_network} but reports no IPv4 address for it")
    return endpoint


def _undo_add(docker: DockerClient, conf: NetConf, key: str, docker_id: str) -> None:
    """Disconnect again; drop the record only once Docker confirms (else DEL/GC will)."""
    docker.extend(CLEANUP_TIMEOUT)
    try:
        disconnect(docker, conf.docker_network, docker_id)
    except CNIError:
        return
    with store.Transaction() as tx:
        if tx.attachments.pop(key, None) is not None:
            tx.dirty = True


def _result(request: Request, conf: NetConf, endpoint: dict[str, Any], pid: int) -> Result:
    address = endpoint.get("IPAddress", "")
    prefix = endpoint.get("IPPrefixLen", 0)
    gateway = endpoint.get("Gateway", "") or ""
    mac = endpoint.get("MacAddress", "") or ""
    ifname = pod_ifname(pid, address, prefix, request.netns)
    result = Result()
    # Like the reference bridge plugin: bridge, host veth, pod interface, so
    # chained plugins that work on the host side (bandwidth) find the veth.
    host = host_veth(pid, ifname)
    if host:
        bridge = link_master(host)
        if bridge:
            result.interfaces.append(Interface(bridge, link_mac(bridge)))
        result.interfaces.append(Interface(host, link_mac(host)))
    result.interfaces.append(Interface(ifname, mac, request.netns))
    result.ips = [IPConfig(f"{address}/{prefix}", gateway, len(result.interfaces) - 1)]
    if gateway:
        result.routes = [Route("0.0.0.0/0", gateway)]
    address6 = endpoint.get("GlobalIPv6Address") or ""
    if address6:  # a Docker network created with --ipv6: dual-stack (issue 13)
        gateway6 = endpoint.get("IPv6Gateway") or ""
        result.ips.append(IPConfig(f"{address6}/{endpoint.get('GlobalIPv6PrefixLen', 64)}",
                                   gateway6, len(result.interfaces) - 1))
        if gateway6:
            result.routes.append(Route("::/0", gateway6))
    result.dns = conf.dns_result(request.pod_namespace)
    return result


# ---------------------------------------------------------------- DEL

def disconnect(docker: DockerClient, network: str, docker_id: str) -> bool:
    """Force-disconnect; True if it was connected. Gone container/network is success."""
    status, data = docker.request("POST", f"/networks/{quote(network)}/disconnect",
                                  {"Container": docker_id, "Force": True})
    if status in (200, 201, 204):
        return True
    message = _message(data)
    if status == 404 or "not connected" in message or "no such" in message \
            or "not found" in message:
        return False
    raise DockerAPIError(status, _message(data), f"disconnect {docker_id[:12]} from {network}")


def delete(request: Request, conf: NetConf) -> None:
    """Idempotent: an unknown or removed container, or a gone netns, all succeed."""
    key = store.attachment_key(conf.name, request.container_id, request.ifname)
    record = store.load()["attachments"].get(key) or {}
    docker_id = record.get("docker_id") or request.container_id
    netns = request.netns or record.get("netns") or ""
    docker = client(conf)
    try:
        if not record and netns and os.path.exists(netns) \
                and docker.inspect_container(docker_id) is None:
            found = find_by_netns(docker, netns)  # ADD may have found it the same way
            docker_id = found["Id"] if found else docker_id
        disconnect(docker, record.get("docker_network") or conf.docker_network, docker_id)
    except DockerUnavailable:
        if netns and os.path.exists(netns):
            raise  # the pod may still be connected: the runtime must retry
        # The sandbox (and its netns) is gone: nothing is left to disconnect.
    if record:
        _forget(key, record)


def _forget(key: str, record: dict[str, Any]) -> None:
    with store.Transaction() as tx:
        current = tx.attachments.get(key)
        if current is not None and current.get("created") == record.get("created"):
            del tx.attachments[key]
            tx.dirty = True


# ---------------------------------------------------------------- CHECK, GC, STATUS

def check(request: Request, conf: NetConf) -> None:
    key = store.attachment_key(conf.name, request.container_id, request.ifname)
    record = store.load()["attachments"].get(key)
    if not record:
        raise CNIError(UNKNOWN_CONTAINER, f"no attachment of container "
                       f"{request.container_id[:12]}/{request.ifname} on network {conf.name}")
    docker = client(conf)
    container = docker.inspect_container(record.get("docker_id") or request.container_id)
    if container is None:
        raise CNIError(UNKNOWN_CONTAINER,
                       f"sandbox container {request.container_id[:12]} no longer exists")
    problems = []
    endpoint = _endpoint(container, conf.docker_network)
    if endpoint is None:
        problems.append(f"container is not connected to docker network {conf.docker_network}")
    else:
        address = f"{endpoint.get('IPAddress')}/{endpoint.get('IPPrefixLen')}"
        expected = {a for a in record.get("ips") or [] if ":" not in a}
        wanted6 = {a for a in record.get("ips") or [] if ":" in a}
        have6 = f"{endpoint.get('GlobalIPv6Address')}/{endpoint.get('GlobalIPv6PrefixLen')}" \
            if endpoint.get("GlobalIPv6Address") else ""
        if wanted6 and wanted6 != {have6}:
            problems.append(f"IPv6 address is {have6 or 'none'}, expected "
                            f"{', '.join(sorted(wanted6))}")
        prev = request.config.get("prevResult")
        if isinstance(prev, dict):
            from ..cni.result import from_dict

            expected |= {ip.address for ip in from_dict(prev).ips if ":" not in ip.address}
        if expected and expected != {address}:
            problems.append(f"address is {address}, expected {', '.join(sorted(expected))}")
        aliases = endpoint.get("Aliases") or []
        for alias in pod_aliases(hostname_of(container), request.pod_name):
            if alias not in aliases:
                problems.append(f"alias {alias} is missing")
        state = container.get("State") or {}
        pid = state.get("Pid") or 0
        if not state.get("Running") or not pid:
            problems.append("sandbox container is not running")
        elif request.netns and not same_inode(f"/proc/{pid}/ns/net", inode(request.netns)):
            problems.append(f"sandbox is no longer in netns {request.netns}")
        else:
            name = record.get("pod_ifname")
            try:
                found = pod_ifname(pid, endpoint.get("IPAddress", ""),
                                   endpoint.get("IPPrefixLen", 0), request.netns)
            except CNIError:
                found = ""
            if not found or (name and found != name):
                problems.append(f"interface {name or '?'} with {address} is missing in the pod")
    if not record.get("ready"):
        problems.append("the attachment never finished (ADD failed or is still running)")
    if problems:
        raise CNIError(CHECK_FAILED, f"CHECK failed for {request.container_id[:12]}/"
                       f"{request.ifname}: " + "; ".join(problems))


def gc(request: Request, conf: NetConf, valid: set[tuple[str, str]]) -> None:
    """Disconnect every sandbox we recorded on this network that is not in `valid`."""
    doomed = {
        key: record for key, record in store.load()["attachments"].items()
        if record.get("network") == conf.name and record.get("mode") == "docker"
        and (record.get("container_id"), record.get("ifname")) not in valid
    }
    if not doomed:
        return
    docker = client(conf)
    unreachable: DockerUnavailable | None = None
    for key, record in doomed.items():
        try:
            disconnect(docker, record.get("docker_network") or conf.docker_network,
                       record.get("docker_id") or record.get("container_id", ""))
        except DockerUnavailable as err:
            netns = record.get("netns") or ""
            if netns and os.path.exists(netns):
                unreachable = err  # still alive: keep the record for the next GC
                continue
            # As in DEL: the sandbox and its netns are gone, nothing to disconnect.
        _forget(key, record)
    if unreachable is not None:
        raise unreachable


def status(request: Request, conf: NetConf) -> None:
    """Code 50 unless dockerd answers and the network exists."""
    try:
        network = client(conf).inspect_network(conf.docker_network)
    except DockerUnavailable as err:
        raise CNIError(PLUGIN_NOT_AVAILABLE, err.msg) from None
    except DockerAPIError as err:
        raise CNIError(PLUGIN_NOT_AVAILABLE, err.msg) from None
    if network is None:
        raise CNIError(PLUGIN_NOT_AVAILABLE,
                       f"docker network {conf.docker_network} does not exist; run "
                       "`smarter-cni install` to create it")
    problem = unreserved_dns_error(network, conf)
    if problem is not None:
        raise CNIError(PLUGIN_NOT_AVAILABLE, problem.msg)


def _message(data: Any) -> str:
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return data["message"][:300]
    return ""
