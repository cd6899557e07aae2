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


def enable_forwarding(family: int = 4) -> None:
    path = FORWARDING[family]
    try:
        with open(path) as handle:
            if handle.read().strip() == "1":
                return
        with open(path, "w") as handle:
            handle.write("1")
    except OSError as err:
        raise CNIError(DATAPLANE_FAILURE, f"cannot enable IPv{family} forwarding: {err.strerror}") from None


def backend() -> str:
    if find_program("iptables"):
        return "iptables"
    if find_program("nft"):
        return "nft"
    raise CNIError(DATAPLANE_FAILURE, "neither iptables nor nft was found; "
                   "install one (apt-get install iptables)")


def _iptables(*args: str) -> int:
    return run(["iptables", "-w", "5", *args]).returncode


def _ensure_rule(table: str, chain: str, rule: list[str], insert: bool,
                 program: str = "iptables") -> None:
    """Add `rule` (first in `chain` when `insert`) unless `program -C` finds it there."""
    if run([program, "-w", "5", "-t", table, "-C", chain, *rule]).returncode == 0:
        return
    verb = ["-I", chain, "1"] if insert else ["-A", chain]
    done = run([program, "-w", "5", "-t", table, *verb, *rule])
    if done.returncode != 0:
        raise CNIError(DATAPLANE_FAILURE, f"{program} -t {table} {chain} failed: {done.error_text}")


def _forward_rules(conf: NetConf) -> list[list[str]]:
    tag = ["-m", "comment", "--comment", comment(conf)]
    return [["-i", conf.bridge, *tag, "-j", "ACCEPT"], ["-o", conf.bridge, *tag, "-j", "ACCEPT"]]


def _masq_jump(conf: NetConf) -> list[str]:
    return ["-s", conf.cidr(), "-m", "comment", "--comment", comment(conf), "-j", chain_name(conf.name)]


def ensure(conf: NetConf) -> list[str]:
    """Make the network's forwarding and masquerading rules exist (idempotent).

    Per family one `iptables-save` and, only when something is missing or
    stale, one `iptables-restore --noflush` with just those changes (~2 execs
    instead of ~14). Returns what was missing, worded as `present` words it
    ([] from the one-rule-at-a-time fallback, which does not look first).
    """
    if conf.ipv4:
        enable_forwarding()
    if conf.subnet6 is not None:
        enable_forwarding(6)
    if backend() == "nft":
        if conf.ipv4:
            _nft_ensure(conf)
        if conf.subnet6 is not None:
            _nft_ensure6(conf)
        return []
    missing = ensure6(conf) if conf.subnet6 is not None else []
    # Within each family NAT is restored before the FORWARD accepts: nothing is forwarded
    # un-NATed while a repair is half done (why, in full: _changes).
    found = _restore(conf, "iptables", ipv6=False, active=conf.ipv4)
    if found is None:
        _ensure_by_rules(conf)
        return missing
    return [*missing, *found]


def _ensure_by_rules(conf: NetConf) -> None:
    """`ensure` for IPv4 one `iptables` exec per step (no iptables-save/-restore here)."""
    if not conf.ipv4:  # IPv6 only: no IPv4 rules (an earlier config's go)
        _drop_stale("filter", "FORWARD", conf, [])
        _drop_stale("nat", "POSTROUTING", conf, [])
        return
    _drop_stale("filter", "FORWARD", conf, _forward_rules(conf))
    _drop_stale("nat", "POSTROUTING", conf, [_masq_jump(conf)] if conf.ip_masq else [])
    # NAT before the FORWARD accepts: see _changes.
    chain = chain_name(conf.name)
    if conf.ip_masq:
        _iptables("-t", "nat", "-N", chain)  # exists already: fine
        _ensure_chain("nat", chain, _masq_chain_rules(conf))
        _ensure_rule("nat", "POSTROUTING", _masq_jump(conf), insert=False)
    for rule in _forward_rules(conf):
        _ensure_rule("filter", "FORWARD", rule, insert=True)


Chains = dict[str, dict[str, list[list[str]]]]


def parse_chains(text: str) -> Chains:
    """`iptables-save` output as {table: {chain: [rule words, in order]}}; declared chains
    without rules are there too, with []."""
    tables: Chains = {}
    chains: dict[str, list[list[str]]] = {}
    for line in text.splitlines():
        if line.startswith("*"):
            chains = tables.setdefault(line[1:].strip(), {})
        elif line.startswith(":"):
            chains.setdefault(line[1:].split(" ", 1)[0], [])
        elif line.startswith("-A "):
            words = split_words(line)
            if len(words) >= 2:
                chains.setdefault(words[1], []).append(words[2:])
    return tables


def quote_rule(words: list[str]) -> str:
    """Rule words as one `iptables-restore` line tail (quoted as iptables-save quotes)."""
    out = []
    for word in words:
        if word and not any(c in word for c in ' "\\\'\t'):
            out.append(word)
        else:
            out.append('"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return " ".join(out)


def _tagged(rule: list[str], conf: NetConf) -> bool:
    mark = comment(conf)
    return any(rule[i] == "--comment" and rule[i + 1] == mark for i in range(len(rule) - 1))


def _changes(tables: Chains, conf: NetConf, ipv6: bool, active: bool) -> str:
    """The `iptables-restore --noflush` script that makes one family's rules whole ("" when
    they are): this network's stale rules deleted, its NAT chain made to hold exactly the
    wanted rules (declaring a chain in a restore flushes it), the POSTROUTING jump appended,
    the FORWARD accepts inserted at the top. `active`: the family is configured at all."""
    masq = active and conf.ip_masq
    jump = (_masq_jump6 if ipv6 else _masq_jump)(conf)
    nat, filt = tables.get("nat", {}), tables.get("filter", {})
    chain = chain_name(conf.name)
    nat_lines = [f"-D POSTROUTING {quote_rule(rule)}" for rule in nat.get("POSTROUTING", [])
                 if _tagged(rule, conf) and not (masq and rule == jump)]
    if masq:
        wanted = (_masq_chain_rules6 if ipv6 else _masq_chain_rules)(conf)
        if nat.get(chain) != wanted:
            nat_lines.append(f":{chain} - [0:0]")
            nat_lines += [f"-A {chain} {quote_rule(rule)}" for rule in wanted]
        if jump not in nat.get("POSTROUTING", []):
            nat_lines.append(f"-A POSTROUTING {quote_rule(jump)}")
    elif chain in nat:  # no NAT (any more) in this family: its chain goes after its jump
        nat_lines += [f"-F {chain}", f"-X {chain}"]
    forward = _forward_rules(conf) if active else []
    have = filt.get("FORWARD", [])
    filter_lines = [f"-D FORWARD {quote_rule(rule)}" for rule in have
                    if _tagged(rule, conf) and rule not in forward]
    # One at a time to the top, as `-I FORWARD 1` did: the last one ends up first.
    filter_lines += [f"-I FORWARD 1 {quote_rule(rule)}" for rule in forward if rule not in have]
    # NAT before the FORWARD accepts (restore commits table by table, in this order):
    # nothing is forwarded un-NATed while a repair is half done (with the other order a
    # pod's steady ping stayed broken after a repair in about 1 of 9 fault-test runs; a
    # NAT-less conntrack entry is the suspected cause).
    return _restore_script(("nat", nat_lines), ("filter", filter_lines))


def _restore_script(*tables: tuple[str, list[str]]) -> str:
    """An iptables-restore script of the tables that have lines, in the order given
    (restore commits table by table, in file order); "" when none has."""
    return "".join(f"*{name}\n" + "\n".join(lines) + "\nCOMMIT\n" for name, lines in tables if lines)


def _restore(conf: NetConf, program: str, ipv6: bool, active: bool) -> list[str] | None:
    """One family's rules made whole: one save, one restore when anything is to change.
    A restore that fails (another tool changed the rules between the two) is planned
    again from a fresh listing once. None: no save/restore here, or the listing failed
    (the caller goes one rule at a time)."""
    save, restore = find_program(f"{program}-save"), find_program(f"{program}-restore")
    if save is None or restore is None:
        return None
    missing: list[str] = []
    for attempt in (1, 2):
        listing = run([save])
        if listing.returncode != 0:
            if attempt == 1:
                return None
            raise CNIError(DATAPLANE_FAILURE, f"{program}-save failed: {listing.error_text}")
        text = listing.stdout.decode("utf-8", "replace")
        tables = parse_chains(text)
        script = _changes(tables, conf, ipv6, active)
        if attempt == 1 and active:
            missing = _missing_from(parse_save(text), conf, ipv6)
        if not script:
            return missing
        done = run([restore, "--noflush", "-w", "5"], script.encode())
        if done.returncode == 0:
            return missing
    raise CNIError(DATAPLANE_FAILURE, f"{program}-restore failed: {done.error_text}")


def _ensure_chain(table: str, chain: str, wanted: list[list[str]]) -> None:
    """Make our own chain hold exactly `wanted`, in order (the RETURNs before MASQUERADE)."""
    listing = run(["iptables", "-w", "5", "-t", table, "-S", chain])
    have = [split_words(line)[2:] for line in listing.stdout.decode(errors="replace").splitlines()
            if line.startswith("-A ")]
    if listing.returncode == 0 and have == wanted:
        return
    _iptables("-t", table, "-F", chain)
    for rule in wanted:
        done = run(["iptables", "-w", "5", "-t", table, "-A", chain, *rule])
        if done.returncode != 0:
            raise CNIError(DATAPLANE_FAILURE, f"iptables -t {table} {chain} failed: {done.error_text}")


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
    """Remove every rule `ensure` made, both families: this network's FORWARD accepts and
    POSTROUTING jump (found by comment) and its NAT chain; absent ones are fine.

    Per family one `iptables-save` and, when any of them is there, one
    `iptables-restore --noflush` (`_removals`); one `iptables` exec per rule
    without save/restore or when the restore fails.
    """
    if not find_program("iptables"):
        if find_program("nft"):
            run(["nft", "delete", "table", "ip", _nft_table(conf)])
            run(["nft", "delete", "table", "ip6", _nft_table(conf)])
        return
    teardown6(conf)
    if not _remove_by_restore(conf, "iptables"):
        _teardown_by_rules(conf)


def drop_families(conf: NetConf) -> None:
    """Remove this network's rules of each family `conf` does not have (a reinstall with
    fewer families: IPv4 -> IPv6 only, IPv6 only or dual-stack -> IPv4): its FORWARD
    accepts and NAT chain through iptables/ip6tables, or its nft table of that family."""
    has = {"ip": conf.ipv4, "ip6": conf.subnet6 is not None}
    if not find_program("iptables"):
        if find_program("nft"):
            for family in ("ip", "ip6"):
                if not has[family]:  # absent already: nft says so, and that is fine
                    run(["nft", "delete", "table", family, _nft_table(conf)])
        return
    if not has["ip6"]:
        teardown6(conf)
    if not has["ip"] and not _remove_by_restore(conf, "iptables"):
        _teardown_by_rules(conf)


def _teardown_by_rules(conf: NetConf) -> None:
    """`teardown` for IPv4 one `iptables` exec per step (the fallback)."""
    _drop_stale("filter", "FORWARD", conf, [])
    _drop_stale("nat", "POSTROUTING", conf, [])
    chain = chain_name(conf.name)
    _iptables("-t", "nat", "-F", chain)
    _iptables("-t", "nat", "-X", chain)


def _removals(tables: Chains, conf: NetConf) -> str:
    """The `iptables-restore --noflush` script that removes this network's rules from one
    family ("" when none is there): each FORWARD and POSTROUTING rule with its comment
    deleted, its NAT chain flushed (declared: `-X` alone fails on a chain with rules) and
    deleted after the jump to it is gone. `*filter` first: forwarding stops before NAT."""
    nat, filt = tables.get("nat", {}), tables.get("filter", {})
    filter_lines = [f"-D FORWARD {quote_rule(rule)}" for rule in filt.get("FORWARD", [])
                    if _tagged(rule, conf)]
    nat_lines = [f"-D POSTROUTING {quote_rule(rule)}" for rule in nat.get("POSTROUTING", [])
                 if _tagged(rule, conf)]
    chain = chain_name(conf.name)
    if chain in nat:
        nat_lines += [f":{chain} - [0:0]", f"-X {chain}"]
    return _restore_script(("filter", filter_lines), ("nat", nat_lines))


def _remove_by_restore(conf: NetConf, program: str) -> bool:
    """`teardown` of one family with one listing and at most one restore. False: no
    save/restore here, or the listing or the restore failed (a restore commits table by
    table, so part may be done): the caller removes what is left one rule at a time."""
    save, restore = find_program(f"{program}-save"), find_program(f"{program}-restore")
    if save is None or restore is None:
        return False
    listing = run([save])
    if listing.returncode != 0:
        return False
    script = _removals(parse_chains(listing.stdout.decode("utf-8", "replace")), conf)
    if not script:
        return True
    return run([restore, "--noflush", "-w", "5"], script.encode()).returncode == 0


FORWARDING = {4: "/proc/sys/net/ipv4/ip_forward", 6: "/proc/sys/net/ipv6/conf/all/forwarding"}


def forwarding_enabled(family: int = 4) -> bool:
    try:
        with open(FORWARDING[family]) as handle:
            return handle.read().strip() == "1"
    except OSError:
        return False


def present(conf: NetConf) -> list[str]:
    """What is missing (for ADD, CHECK, the reconciler and `status`): [] when all is there.

    One exec: `iptables-save` read whole (~2 ms), instead of one `iptables -C`
    exec per rule. The NAT chain's own rules are checked too: a flushed chain
    masquerades nothing even with its jump in place.
    """
    if backend() == "nft":
        ok = not conf.ipv4 or run(["nft", "list", "table", "ip", _nft_table(conf)]).returncode == 0
        missing = [] if ok else [f"nft table ip {_nft_table(conf)}"]
        if conf.subnet6 is not None and \
                run(["nft", "list", "table", "ip6", _nft_table(conf)]).returncode != 0:
            missing.append(f"nft table ip6 {_nft_table(conf)}")
        return missing
    if not conf.ipv4:
        return present6(conf)
    if conf.subnet6 is None:
        return _present4(conf)
    # Dual-stack: ip6tables-save runs beside iptables-save (two cores on most boards), so
    # the IPv6 look adds ~nothing to ADD's wall time. `_thread`: `threading` costs imports.
    import _thread

    box: list[object] = []
    lock = _thread.allocate_lock()
    lock.acquire()

    def look6() -> None:
        try:
            box.append(present6(conf))
        except BaseException as err:  # handed to the caller below
            box.append(err)
        finally:
            lock.release()

    _thread.start_new_thread(look6, ())
    try:
        missing = _present4(conf)
    finally:
        lock.acquire()
    if isinstance(box[0], BaseException):
        raise box[0]
    return [*box[0], *missing]  # type: ignore[misc]


def _present4(conf: NetConf) -> list[str]:
    save = find_program("iptables-save")
    if save is None:
        return _present_one_by_one(conf)
    done = run([save])
    if done.returncode != 0:
        return _present_one_by_one(conf)
    return _missing_from(parse_save(done.stdout.decode("utf-8", "replace")), conf, ipv6=False)


def _missing_from(rules: set[tuple[str, str, tuple[str, ...]]], conf: NetConf,
                  ipv6: bool) -> list[str]:
    """Which of this network's rules (IPv4 or IPv6) an iptables-save listing lacks, in words."""
    forward, nat = ("IPv6 FORWARD", "ip6tables nat") if ipv6 else ("FORWARD", "nat")
    jump, chain_rules = (_masq_jump6, _masq_chain_rules6) if ipv6 else (_masq_jump, _masq_chain_rules)
    cidr = conf.cidr6() if ipv6 else conf.cidr()
    missing = []
    for rule in _forward_rules(conf):
        if ("filter", "FORWARD", tuple(rule)) not in rules:
            missing.append(f"{forward} accept {' '.join(rule[:2])}")
    if conf.ip_masq:
        chain = chain_name(conf.name)
        if ("nat", "POSTROUTING", tuple(jump(conf))) not in rules:
            missing.append(f"{nat} POSTROUTING jump to {chain} for {cidr}")
        if not all(("nat", chain, tuple(rule)) in rules for rule in chain_rules(conf)):
            missing.append(f"{nat} chain {chain} (masquerade for {cidr})")
    return missing


def parse_save(text: str) -> set[tuple[str, str, tuple[str, ...]]]:
    """`iptables-save` output as {(table, chain, rule words)}; quoting as iptables-save writes it."""
    rules = set()
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith("-A "):
            words = split_words(line)
            if len(words) >= 2:
                rules.add((table, words[1], tuple(words[2:])))
    return rules


def split_words(line: str) -> list[str]:
    """Split on spaces, honouring "..." with backslash escapes (no `shlex` on the hot path)."""
    words: list[str] = []
    word: list[str] = []
    quoted = escaped = started = False
    for char in line:
        if escaped:
            word.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
            started = True
        elif char == " " and not quoted:
            if word or started:
                words.append("".join(word))
            word, started = [], False
        else:
            word.append(char)
    if word or started:
        words.append("".join(word))
    return words


def _masq_chain_rules(conf: NetConf) -> list[list[str]]:
    return [["-d", conf.cidr(), "-j", "RETURN"], ["-d", MULTICAST, "-j", "RETURN"],
            ["-j", "MASQUERADE"]]


def _present_one_by_one(conf: NetConf) -> list[str]:
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
    _nft_replace("ip", table, conf.bridge, masq, "nft")


def _nft_replace(family: str, table: str, bridge: str, masq: str, what: str) -> None:
    """Load the network's table of one family afresh (created empty first so the delete
    cannot fail): forward accepts for the bridge, and `masq`, the NAT chain, if any."""
    # one chain a line: nft wants a newline or ';' between a table's chains
    script = (
        f"table {family} {table} {{}}\ndelete table {family} {table}\n"
        f"table {family} {table} {{\n chain forward {{ type filter hook forward priority filter; "
        f"policy accept; iifname \"{bridge}\" accept; oifname \"{bridge}\" accept; }}\n"
        f" {masq}\n}}\n"
    )
    done = run(["nft", "-f", "-"], script.encode())
    if done.returncode != 0:
        raise CNIError(DATAPLANE_FAILURE, f"{what} failed: {done.error_text}")


# ---------------------------------------------------------------- IPv6 (subnet6)
# The same rules as IPv4 through ip6tables: FORWARD accepts for the bridge, a NAT chain that
# masquerades the pods' prefix (a ULA prefix is not routed beyond the node).

def _ip6tables(*args: str) -> int:
    return run(["ip6tables", "-w", "5", *args]).returncode


def _masq_jump6(conf: NetConf) -> list[str]:
    return ["-s", conf.cidr6(), "-m", "comment", "--comment", comment(conf),
            "-j", chain_name(conf.name)]


def _masq_chain_rules6(conf: NetConf) -> list[list[str]]:
    return [["-d", conf.cidr6(), "-j", "RETURN"], ["-d", MULTICAST6, "-j", "RETURN"],
            ["-j", "MASQUERADE"]]


MULTICAST6 = "ff00::/8"


def _ensure_rule6(table: str, chain: str, rule: list[str], insert: bool) -> None:
    _ensure_rule(table, chain, rule, insert, "ip6tables")


def _rules6(table: str, chain: str, conf: NetConf | None = None) -> list[list[str]]:
    """The rules of one ip6tables chain (only this network's, by comment, when `conf`)."""
    listing = run(["ip6tables", "-w", "5", "-t", table, "-S", chain])
    found = []
    for line in listing.stdout.decode(errors="replace").splitlines():
        if not line.startswith("-A "):
            continue
        words = split_words(line)[2:]
        tagged = any(words[i] == "--comment" and words[i + 1] == comment(conf)
                     for i in range(len(words) - 1)) if conf is not None else True
        if tagged:
            found.append(words)
    return found


def ensure6(conf: NetConf) -> list[str]:
    """`ensure`'s IPv6 half: one ip6tables-save, one ip6tables-restore when needed."""
    if not find_program("ip6tables"):
        raise CNIError(DATAPLANE_FAILURE, "subnet6 needs ip6tables (apt-get install iptables)")
    found = _restore(conf, "ip6tables", ipv6=True, active=True)
    if found is None:
        _ensure6_by_rules(conf)
        return []
    return found


def _ensure6_by_rules(conf: NetConf) -> None:
    chain = chain_name(conf.name)
    for table, parent, wanted in (("filter", "FORWARD", _forward_rules(conf)),
                                  ("nat", "POSTROUTING", [_masq_jump6(conf)] if conf.ip_masq else [])):
        for rule in _rules6(table, parent, conf):
            if rule not in wanted:
                _ip6tables("-t", table, "-D", parent, *rule)
    if conf.ip_masq:
        _ip6tables("-t", "nat", "-N", chain)
        if _rules6("nat", chain) != _masq_chain_rules6(conf):
            _ip6tables("-t", "nat", "-F", chain)
            for rule in _masq_chain_rules6(conf):
                _ensure_rule6("nat", chain, rule, insert=False)
        _ensure_rule6("nat", "POSTROUTING", _masq_jump6(conf), insert=False)
    for rule in _forward_rules(conf):
        _ensure_rule6("filter", "FORWARD", rule, insert=True)


def present6(conf: NetConf) -> list[str]:
    save = find_program("ip6tables-save")
    done = run([save]) if save else None
    if done is None or done.returncode != 0:
        return [f"ip6tables rules for {conf.cidr6()} (ip6tables-save failed)"]
    return _missing_from(parse_save(done.stdout.decode("utf-8", "replace")), conf, ipv6=True)


def teardown6(conf: NetConf) -> None:
    """`teardown`'s IPv6 half (also run for an IPv4-only config: an earlier one may have
    had subnet6): one ip6tables-save, one ip6tables-restore when anything is there."""
    if not find_program("ip6tables"):
        return
    if _remove_by_restore(conf, "ip6tables"):
        return
    for table, parent in (("filter", "FORWARD"), ("nat", "POSTROUTING")):
        for rule in _rules6(table, parent, conf):
            _ip6tables("-t", table, "-D", parent, *rule)
    chain = chain_name(conf.name)
    _ip6tables("-t", "nat", "-F", chain)
    _ip6tables("-t", "nat", "-X", chain)


def _nft_ensure6(conf: NetConf) -> None:
    table = _nft_table(conf)
    masq = ""
    if conf.ip_masq:
        masq = (f"chain postrouting {{ type nat hook postrouting priority srcnat; policy accept; "
                f"ip6 saddr {conf.cidr6()} ip6 daddr != {{ {conf.cidr6()}, {MULTICAST6} }} "
                "masquerade; }")
    _nft_replace("ip6", table, conf.bridge, masq, "nft (ip6)")
