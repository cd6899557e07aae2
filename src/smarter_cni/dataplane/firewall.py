"""Forwarding and NAT for a bridge network, set up once per network (not per pod).

Prefers `iptables` (legacy or nft backend, whichever the host selected):
on hosts with Docker the FORWARD policy is DROP and only a rule in that
same FORWARD chain can let the bridge's traffic through. Falls back to an
`nft` table of our own on hosts without iptables.
"""

from __future__ import annotations

from ..cni.errors import DATAPLANE_FAILURE, CNIError
from ..run import find_program, run
from .names import chain_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..netconf import NetConf

MULTICAST = "224.0.0.0/4"


def comment(conf: NetConf) -> str:
    return f"smarter-cni {conf.name}"[:250]


def enable_forwarding() -> None:
    path = "/proc/sys/net/ipv4/ip_forward"
    try:
        with open(path) as handle:
            if handle.read().strip() == "1":
                return
        with open(path, "w") as handle:
            handle.write("1")
    except OSError as err:
        raise CNIError(DATAPLANE_FAILURE, f"cannot enable IPv4 forwarding: {err.strerror}") from None


def backend() -> str:
    if find_program("iptables"):
        return "iptables"
    if find_program("nft"):
        return "nft"
    raise CNIError(DATAPLANE_FAILURE, "neither iptables nor nft was found; "
                   "install one (apt-get install iptables)")


def _iptables(*args: str) -> int:
    return run(["iptables", "-w", "5", *args]).returncode


def _ensure_rule(table: str, chain: str, rule: list[str], insert: bool) -> None:
    if _iptables("-t", table, "-C", chain, *rule) == 0:
        return
    verb = ["-I", chain, "1"] if insert else ["-A", chain]
    done = run(["iptables", "-w", "5", "-t", table, *verb, *rule])
    if done.returncode != 0:
        raise CNIError(DATAPLANE_FAILURE, f"iptables -t {table} {chain} failed: {done.error_text}")


def _forward_rules(conf: NetConf) -> list[list[str]]:
    tag = ["-m", "comment", "--comment", comment(conf)]
    return [["-i", conf.bridge, *tag, "-j", "ACCEPT"], ["-o", conf.bridge, *tag, "-j", "ACCEPT"]]


def _masq_jump(conf: NetConf) -> list[str]:
    return ["-s", conf.cidr(), "-m", "comment", "--comment", comment(conf), "-j", chain_name(conf.name)]


def ensure(conf: NetConf) -> None:
    """Make the network's forwarding and masquerading rules exist (idempotent)."""
    enable_forwarding()
    if backend() == "nft":
        _nft_ensure(conf)
        return
    _drop_stale("filter", "FORWARD", conf, _forward_rules(conf))
    _drop_stale("nat", "POSTROUTING", conf, [_masq_jump(conf)] if conf.ip_masq else [])
    for rule in _forward_rules(conf):
        _ensure_rule("filter", "FORWARD", rule, insert=True)
    chain = chain_name(conf.name)
    if conf.ip_masq:
        _iptables("-t", "nat", "-N", chain)  # exists already: fine
        wanted = [["-d", conf.cidr(), "-j", "RETURN"], ["-d", MULTICAST, "-j", "RETURN"],
                  ["-j", "MASQUERADE"]]
        for rule in wanted:
            _ensure_rule("nat", chain, rule, insert=False)
        _ensure_rule("nat", "POSTROUTING", _masq_jump(conf), insert=False)


def _drop_stale(table: str, chain: str, conf: NetConf, wanted: list[list[str]]) -> None:
    """Delete this network's rules that no longer match its config (old bridge or subnet)."""
    import shlex

    listing = run(["iptables", "-w", "5", "-t", table, "-S", chain])
    marker = f'--comment "{comment(conf)}"'
    for line in listing.stdout.decode(errors="replace").splitlines():
        if marker not in line and f"--comment {comment(conf)}" not in line:
            continue
        words = shlex.split(line)
        if words[:2] != ["-A", chain] or words[2:] in wanted:
            continue
        _iptables("-t", table, "-D", chain, *words[2:])


def teardown(conf: NetConf) -> None:
    """Remove every rule `ensure` made; absent rules are fine."""
    if not find_program("iptables"):
        if find_program("nft"):
            run(["nft", "delete", "table", "ip", _nft_table(conf)])
        return
    _drop_stale("filter", "FORWARD", conf, [])
    _drop_stale("nat", "POSTROUTING", conf, [])
    chain = chain_name(conf.name)
    _iptables("-t", "nat", "-F", chain)
    _iptables("-t", "nat", "-X", chain)


def present(conf: NetConf) -> list[str]:
    """What is missing (for CHECK and `status`): empty when all rules are there."""
    if backend() == "nft":
        ok = run(["nft", "list", "table", "ip", _nft_table(conf)]).returncode == 0
        return [] if ok else [f"nft table ip {_nft_table(conf)}"]
    missing = []
    for rule in _forward_rules(conf):
        if _iptables("-t", "filter", "-C", "FORWARD", *rule) != 0:
            missing.append("FORWARD " + " ".join(rule[:2]))
    if conf.ip_masq and _iptables("-t", "nat", "-C", "POSTROUTING", *_masq_jump(conf)) != 0:
        missing.append(f"nat POSTROUTING masquerade for {conf.cidr()}")
    return missing


def _nft_table(conf: NetConf) -> str:
    return chain_name(conf.name).lower().replace("-", "_")


def _nft_ensure(conf: NetConf) -> None:
    table = _nft_table(conf)
    masq = ""
    if conf.ip_masq:
        masq = (f"chain postrouting {{ type nat hook postrouting priority srcnat; policy accept; "
                f"ip saddr {conf.cidr()} ip daddr != {{ {conf.cidr()}, {MULTICAST} }} masquerade; }}")
    script = (
        f"table ip {table} {{}}\ndelete table ip {table}\n"
        f"table ip {table} {{ chain forward {{ type filter hook forward priority filter; "
        f"policy accept; iifname \"{conf.bridge}\" accept; oifname \"{conf.bridge}\" accept; }} "
        f"{masq} }}\n"
    )
    done = run(["nft", "-f", "-"], script.encode())
    if done.returncode != 0:
        raise CNIError(DATAPLANE_FAILURE, f"nft failed: {done.error_text}")
