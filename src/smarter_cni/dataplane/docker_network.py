"""The Docker network docker mode attaches pods to: what it must look like,
creating it, and migrating one that leaves the node DNS address unreserved.

The original smarter-cni made `mynet` with `docker network create --subnet
--gateway` and ran its dnsmasq container on 172.38.0.2, so Docker's IPAM
was free to give that address to the first pod once the container was gone.
Here the address is reserved (an IPAM auxiliary address), ADD and STATUS
refuse a network that does not reserve it (`unreserved_dns_error`), and
`ensure_network` (the installer's call) recreates such a network with the
reservation when nothing uses it, or says exactly what to move off it.
"""

from __future__ import annotations

from .. import ipv4
from ..cni.errors import DOCKER_FAILURE, DOCKER_NETWORK_UNSAFE, INVALID_NETWORK_CONFIG, CNIError
from ..docker_api import DockerClient, error_message, quote

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

    from ..netconf import NetConf

MANAGED_LABEL = "io.smarter-cni.managed"
MIGRATED_LABEL = "io.smarter-cni.dns-reserved"   # on a network recreated by migrate()
DNS_AUX_NAME = "smarter-cni-dns"   # the auxiliary-address key that reserves the DNS address
INSTALL_TIMEOUT = 30.0             # the installer may wait for a busy dockerd
POD_NAME_LABEL = "io.kubernetes.pod.name"          # set by cri-dockerd on pod containers
POD_NAMESPACE_LABEL = "io.kubernetes.pod.namespace"


# ---------------------------------------------------------------- the shape

def dns_reservable(conf: NetConf) -> bool:
    """The DNS address is reserved only when it lies inside the subnet (else nothing to do)."""
    try:
        address = ipv4.to_int(conf.dns_address)
    except ipv4.AddressError:
        return False
    return ipv4.contains(conf.subnet, conf.prefix, address) and address != conf.gateway


def ipv4_pools(network: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in ((network.get("IPAM") or {}).get("Config") or [])
            if isinstance(p, dict) and ":" not in str(p.get("Subnet", ""))]


def dns_exposed(network: dict[str, Any], dns_address: str) -> bool:
    """True when Docker's IPAM could give `dns_address` to a container on `network`.

    Reserved means: an auxiliary address of its pool, the pool's gateway, or
    outside the pool's IPRange (Docker allocates only from the range).
    """
    try:
        address = ipv4.to_int(dns_address)
    except ipv4.AddressError:
        return False
    for pool in ipv4_pools(network):
        try:
            subnet, prefix = ipv4.parse_cidr(pool.get("Subnet", ""), strict=False)
        except ipv4.AddressError:
            continue
        if not ipv4.contains(subnet, prefix, address):
            continue
        gateway = pool.get("Gateway") or ipv4.to_text(subnet + 1)
        if dns_address == gateway or dns_address in (pool.get("AuxiliaryAddresses") or {}
                                                     ).values():
            return False
        if pool.get("IPRange"):
            try:
                first, size = ipv4.parse_cidr(pool["IPRange"], strict=False)
            except ipv4.AddressError:
                return True
            if not ipv4.contains(first, size, address):
                return False
        return True
    return False


def dns_holder(network: dict[str, Any], dns_address: str) -> str:
    """'name (id)' of the container that holds `dns_address` on `network`, or ''."""
    for docker_id, endpoint in (network.get("Containers") or {}).items():
        if isinstance(endpoint, dict) and \
                str(endpoint.get("IPv4Address", "")).split("/")[0] == dns_address:
            return f"{endpoint.get('Name') or '?'} ({docker_id[:12]})"
    return ""


def install_command(conf: NetConf) -> str:
    """The installer command line that migrates this network (non-default options only)."""
    from ..netconf import DEFAULT_DOCKER_NETWORK, DEFAULTS

    parts = ["sudo smarter-cni install --mode docker"]
    if conf.docker_network != DEFAULT_DOCKER_NETWORK:
        parts.append(f"--network {conf.docker_network}")
    if conf.cidr() != DEFAULTS["docker"]["subnet"]:
        parts.append(f"--subnet {conf.cidr()}")
    if conf.gateway != conf.subnet + 1:
        parts.append(f"--gateway {conf.gateway_text()}")
    if conf.dns_address != DEFAULTS["docker"]["dnsAddress"]:
        parts.append(f"--dns-ip {conf.dns_address}")
    return " ".join(parts)


def unreserved_dns_error(network: dict[str, Any], conf: NetConf) -> CNIError | None:
    """ADD's and STATUS's check: a network that would hand the DNS address to a pod."""
    if not dns_exposed(network, conf.dns_address):
        return None
    holder = dns_holder(network, conf.dns_address)
    held = f"; container {holder} already holds it" if holder else ""
    return CNIError(
        DOCKER_NETWORK_UNSAFE,
        f"docker network {conf.docker_network} does not reserve the node DNS address "
        f"{conf.dns_address}, so Docker could give it to a pod and the pods' DNS would stop"
        f"{held}. Fix: `{install_command(conf)}` recreates the network with the address "
        "reserved (it says what to remove from the network first)")


def network_conflicts(network: dict[str, Any], conf: NetConf, dns: bool = True) -> list[str]:
    """Why an existing Docker network cannot serve this config ([] = compatible).

    `dns=False` leaves out the unreserved DNS address, which a migration fixes.
    """
    problems = []
    if network.get("Driver") != "bridge":
        problems.append(f"driver is {network.get('Driver')!r}, not 'bridge'")
    pools = ipv4_pools(network)
    pool = next((p for p in pools if p.get("Subnet") == conf.cidr()), None)
    if pool is None:
        have = ", ".join(p.get("Subnet", "?") for p in pools) or "none"
        problems.append(f"subnet is {have}, config wants {conf.cidr()}")
        return problems
    gateway = pool.get("Gateway") or ipv4.to_text(conf.subnet + 1)
    if gateway != conf.gateway_text():
        problems.append(f"gateway is {gateway}, config wants {conf.gateway_text()}")
    if dns and dns_reservable(conf) and dns_exposed(network, conf.dns_address):
        problems.append(f"DNS address {conf.dns_address} is not reserved (an auxiliary "
                        "address), so Docker could give it to a pod")
    if network.get("Internal"):
        problems.append("it is internal (no gateway to the node)")
    return problems


# ---------------------------------------------------------------- create or migrate

def ensure_network(conf: NetConf, on_change: Callable[[str], None] | None = None,
                   _retry: bool = True) -> str:
    """Create the Docker network if absent, migrate one without the DNS reservation,
    accept a compatible one; return its ID.

    `on_change` hears one line when an existing network was recreated.
    """
    docker = DockerClient(conf.docker_socket, INSTALL_TIMEOUT)
    existing = docker.inspect_network(conf.docker_network)
    if existing is None:
        status, data = docker.request("POST", "/networks/create", create_body(conf))
        if status in (200, 201):
            return (data or {}).get("Id", "")
        if status == 409 and _retry:  # created concurrently by someone else: judge that one
            return ensure_network(conf, on_change, _retry=False)
        raise CNIError(DOCKER_FAILURE, f"cannot create docker network {conf.docker_network} "
                       f"({conf.cidr()}): {error_message(data)}")
    problems = network_conflicts(existing, conf)
    if any(not p.startswith("DNS address") for p in problems):
        raise CNIError(INVALID_NETWORK_CONFIG,
                       f"docker network {conf.docker_network} exists but does not match "
                       f"the config: {'; '.join(problems)}. Remove it (docker network rm "
                       f"{conf.docker_network}) or change the config")
    if not problems:
        return existing.get("Id", "")
    return migrate(docker, existing, conf, on_change)


def create_body(conf: NetConf) -> dict[str, Any]:
    pool: dict[str, Any] = {"Subnet": conf.cidr(), "Gateway": conf.gateway_text()}
    if dns_reservable(conf):
        pool["AuxiliaryAddresses"] = {DNS_AUX_NAME: conf.dns_address}
    body: dict[str, Any] = {
        "Name": conf.docker_network,
        "Driver": "bridge",
        "CheckDuplicate": True,
        "IPAM": {"Driver": "default", "Config": [pool]},
        "Labels": {MANAGED_LABEL: "true"},
        "Options": {},
    }
    if conf.mtu != 1500:
        body["Options"]["com.docker.network.driver.mtu"] = str(conf.mtu)
    return body


def recreate_body(network: dict[str, Any], dns_address: str) -> dict[str, Any]:
    """The create request for `network` as it is, plus the DNS address reserved.

    Same name, driver, IPAM driver and pools (subnet, range, gateway, other
    auxiliary addresses), options and labels. No MANAGED_LABEL: smarter-cni
    did not make this network, so uninstall leaves it, as it found it;
    MIGRATED_LABEL says why it was recreated.
    """
    ipam = network.get("IPAM") or {}
    pools = []
    address = ipv4.to_int(dns_address) if dns_address else -1
    for pool in ipam.get("Config") or []:
        if not isinstance(pool, dict):
            continue
        copy = {key: pool[key] for key in ("Subnet", "IPRange", "Gateway") if pool.get(key)}
        aux = dict(pool.get("AuxiliaryAddresses") or {})
        if ":" not in str(pool.get("Subnet", "")):
            subnet, prefix = ipv4.parse_cidr(pool.get("Subnet", ""), strict=False)
            if ipv4.contains(subnet, prefix, address) and dns_address not in aux.values():
                key = DNS_AUX_NAME
                while key in aux:
                    key += "-x"
                aux[key] = dns_address
        if aux:
            copy["AuxiliaryAddresses"] = aux
        pools.append(copy)
    return {
        "Name": network.get("Name", ""),
        "Driver": network.get("Driver") or "bridge",
        "CheckDuplicate": True,
        "Internal": bool(network.get("Internal")),
        "Attachable": bool(network.get("Attachable")),
        "EnableIPv6": bool(network.get("EnableIPv6")),
        "IPAM": {"Driver": ipam.get("Driver") or "default",
                 "Options": dict(ipam.get("Options") or {}), "Config": pools},
        "Options": dict(network.get("Options") or {}),
        "Labels": dict(network.get("Labels") or {}, **(
            {MIGRATED_LABEL: dns_address} if dns_address else {})),
    }


def attached(docker: DockerClient, network: dict[str, Any]) -> list[dict[str, str]]:
    """Every container that uses `network`: running ones, and stopped ones too (a stopped
    container still names the network's ID and could never start again once the
    network is recreated)."""
    network_id = network.get("Id", "")
    query = quote('{"network":["' + network_id + '"]}')
    users: dict[str, dict[str, str]] = {}
    for entry in docker.get(f"/containers/json?all=1&filters={query}",
                            f"list containers on network {network.get('Name')}") or []:
        if not isinstance(entry, dict) or not entry.get("Id"):
            continue
        labels = entry.get("Labels") or {}
        names = entry.get("Names") or []
        endpoint = ((entry.get("NetworkSettings") or {}).get("Networks") or {}).get(
            network.get("Name", "")) or {}
        pod = ""
        if labels.get(POD_NAME_LABEL):
            pod = f"{labels.get(POD_NAMESPACE_LABEL, '?')}/{labels[POD_NAME_LABEL]}"
        users[entry["Id"]] = {
            "id": entry["Id"], "name": (names[0] if names else entry["Id"][:12]).lstrip("/"),
            "state": str(entry.get("State") or "?"), "address": endpoint.get("IPAddress") or "",
            "pod": pod,
        }
    for docker_id, endpoint in (network.get("Containers") or {}).items():
        if docker_id not in users and isinstance(endpoint, dict):  # e.g. a load balancer
            users[docker_id] = {"id": docker_id, "name": endpoint.get("Name") or docker_id[:12],
                                "state": "attached", "pod": "",
                                "address": str(endpoint.get("IPv4Address", "")).split("/")[0]}
    return list(users.values())


def refusal(conf: NetConf, users: list[dict[str, str]]) -> CNIError:
    """Why the network cannot be recreated now, and the steps that make it possible."""
    # The DNS address's holder first, then pods, then the rest.
    users = sorted(users, key=lambda u: (u["address"] != conf.dns_address, not u["pod"],
                                         u["name"]))
    described = []
    for user in users:
        facts = [user["id"][:12], user["state"]]
        if user["address"]:
            facts.append(user["address"])
        if user["pod"]:
            facts.append(f"pod {user['pod']}")
        if user["address"] == conf.dns_address:
            facts.append("holds the DNS address")
        described.append(f"{user['name']} ({', '.join(facts)})")
    running_pods = [u for u in users if u["pod"] and u["state"] == "running"]
    others = [u["name"] for u in users if u not in running_pods]
    steps = []
    if running_pods:
        steps.append("move the pods off this node: kubectl drain NODE --ignore-daemonsets "
                     "--delete-emptydir-data (or delete those pods)")
    if others:
        steps.append(f"remove the other containers: docker rm -f {' '.join(others)} (or keep "
                     f"one with docker network disconnect -f {conf.docker_network} NAME)"
                     + ("; the original smarter-cni's mydns is replaced by the node DNS "
                        "service" if "mydns" in others else ""))
    steps.append(f"run `{install_command(conf)}` again")
    if running_pods:
        steps.append("kubectl uncordon NODE")
    return CNIError(
        DOCKER_NETWORK_UNSAFE,
        f"docker network {conf.docker_network} ({conf.cidr()}) does not reserve the node DNS "
        f"address {conf.dns_address}, and it can be recreated with the reservation only "
        f"while no container uses it. In use by {len(users)}: {'; '.join(described)}. "
        "To migrate: " + "; ".join(f"{n}) {s}" for n, s in enumerate(steps, 1)))


def migrate(docker: DockerClient, network: dict[str, Any], conf: NetConf,
            on_change: Callable[[str], None] | None = None) -> str:
    """Recreate `network` unchanged but for the DNS reservation; refuse while it is used."""
    users = attached(docker, network)
    if users:
        raise refusal(conf, users)
    body = recreate_body(network, conf.dns_address)
    network_id = network.get("Id", "")
    status, data = docker.request("DELETE", f"/networks/{quote(network_id)}")
    if status not in (200, 204, 404):
        if status in (403, 409) or "active endpoints" in error_message(data):
            users = attached(docker, docker.inspect_network(conf.docker_network) or network)
            if users:
                raise refusal(conf, users)  # something was attached meanwhile
        raise CNIError(DOCKER_FAILURE, f"cannot remove docker network {conf.docker_network} "
                       f"to recreate it: {error_message(data)}")
    status, data = docker.request("POST", "/networks/create", body)
    if status not in (200, 201):
        original = recreate_body(network, "")  # put back what was there, unreserved
        back, _ = docker.request("POST", "/networks/create", original)
        restored = "put back as it was" if back in (200, 201) else \
            f"is GONE: recreate it by hand (docker network create --subnet {conf.cidr()} " \
            f"--gateway {conf.gateway_text()} --aux-address dns={conf.dns_address} " \
            f"{conf.docker_network})"
        raise CNIError(DOCKER_FAILURE, f"cannot recreate docker network {conf.docker_network} "
                       f"with {conf.dns_address} reserved: {error_message(data)}; the network "
                       f"{restored}")
    message = (f"docker network {conf.docker_network} ({conf.cidr()}) recreated with the node "
               f"DNS address {conf.dns_address} reserved (it was not)")
    _log(message)
    if on_change is not None:
        on_change(message)
    return (data or {}).get("Id", "")


def _log(message: str) -> None:
    from ..logs import log

    log("info", message)
