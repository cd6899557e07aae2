"""What the session watchdog counts as this run's (helpers/session_watch.py Owned), and
its iptables sweep on a saved ruleset (no root: the table is parsed, nothing runs)."""

from __future__ import annotations

from helpers.session_watch import Owned

TOKEN = "3f9c2a71b04e5d"  # unique("t") part: "t" + 14 hex
OTHER = "8d1e07c5a2b9f4"  # another run's


def owned() -> Owned:
    return Owned({TOKEN, "5ab0c3d1"}, {"scd0123456789ab", "br-0a1b2c3d4e5f"})


def test_names_carrying_a_token_or_its_prefix_are_ours() -> None:
    mine = owned()
    assert mine.name(f"scni-{TOKEN}a01")          # a netns from unique("scni-", 24)
    assert mine.name(f"brt{TOKEN[:9]}")           # bridge_network: "br" + name[:10]
    assert mine.name(f"brc{TOKEN[:9]}")           # a hex letter before the token's digits
    assert mine.name("scd0123456789ab")           # a noted name, exactly
    assert mine.name("ctr-1-5ab0c3d1")            # run_id(): the SESSION token


def test_the_node_and_other_runs_are_not_ours() -> None:
    mine = owned()
    for name in ("docker0", "smarter0", "smarter-dns", "lo", "eth0", "cni0", "flannel.1",
                 f"scni-{OTHER}a01", f"brt{OTHER[:9]}", f"brc{OTHER[:9]}", "scd0123456789ac",
                 f"sm{TOKEN[:13]}", f"br-{TOKEN[:12]}",  # hash names: only ever exact
                 f"brt{TOKEN[:8]}",  # 8 digits are too few to tell runs apart
                 TOKEN[:7], "br-0a1b2c3d4e"):
        assert not mine.name(name), name


def test_rule_text_matches_comments_and_noted_names() -> None:
    mine = owned()
    assert mine.text(f'-A FORWARD -i brx -m comment --comment "smarter-cni net-t{TOKEN}" -j ACCEPT')
    assert mine.text('-A FORWARD -m comment --comment "smarter-cni-tests scd0123456789ab" -j ACCEPT')
    assert not mine.text('-A FORWARD -m comment --comment "smarter-cni smarter" -j SMARTER-CNI-0A1B2C3D')
    assert not mine.text(f'-A FORWARD -m comment --comment "smarter-cni net-t{OTHER}" -j ACCEPT')
    assert not mine.text("-A FORWARD -o docker0 -j DOCKER")


SAVE = f"""*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:SMARTER-CNI-AAAAAAAA - [0:0]
:SMARTER-CNI-BBBBBBBB - [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
:SCNI-{TOKEN[:10].upper()} - [0:0]
:x{TOKEN} - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A PREROUTING -m comment --comment "smarter-cni net-t{TOKEN}" -j CNI-HOSTPORT-DNAT
-A POSTROUTING -s 10.244.1.0/24 -m comment --comment "smarter-cni net-t{TOKEN}" -j SMARTER-CNI-AAAAAAAA
-A POSTROUTING -s 10.244.2.0/24 -m comment --comment "smarter-cni net-t{OTHER}" -j SMARTER-CNI-BBBBBBBB
-A POSTROUTING -j x{TOKEN}
-A SMARTER-CNI-AAAAAAAA -d 10.244.1.0/24 -j RETURN
-A SMARTER-CNI-AAAAAAAA -j MASQUERADE
-A SMARTER-CNI-BBBBBBBB -j MASQUERADE
-A x{TOKEN} -j RETURN
COMMIT
"""


def test_plan_deletes_only_this_runs_rules_and_chains() -> None:
    from helpers.session_watch import plan_table

    rules, chains = plan_table(SAVE, owned())
    assert chains == ["SMARTER-CNI-AAAAAAAA", f"x{TOKEN}"]  # jumped to only by ours; named
    assert rules == [
        ["PREROUTING", "-m", "comment", "--comment", f"smarter-cni net-t{TOKEN}", "-j",
         "CNI-HOSTPORT-DNAT"],
        ["POSTROUTING", "-s", "10.244.1.0/24", "-m", "comment", "--comment",
         f"smarter-cni net-t{TOKEN}", "-j", "SMARTER-CNI-AAAAAAAA"],
        ["POSTROUTING", "-j", f"x{TOKEN}"],
    ]  # CNI-HOSTPORT-DNAT is also the node's: kept; the other run's chain and jump: kept
