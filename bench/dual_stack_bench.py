"""Dual-stack ADD/DEL side by side, interleaved in one run (issue 13).

Chains, each `loopback` first as a runtime does:
  A4   smarter-cni, IPv4 only
  A46  smarter-cni, dual-stack (subnet6)
  B46  reference bridge (isGateway, ipMasq) + host-local with two ranges
  C46  reference bridge (isGateway, no ipMasq) + host-local with two ranges

Pod i of every chain is added in turn (order alternating per pod), then deleted the
same way. Reported: medians with their inter-quartile range, and the ratio of medians
over blocks of pods (min..max across blocks) as the spread of each ratio.

  sudo .venv/bin/python bench/dual_stack_bench.py --pods 60
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import common
from common import Chain, percentile

KEYS = ("A4", "A46", "B46", "C46")


def _ula() -> str:
    return f"fd{random.randint(0, 255):02x}:{random.randint(1, 0xFFFF):x}:" \
           f"{random.randint(1, 0xFFFF):x}::/64"


def build(tmp: Path, run_id: str, python: str) -> tuple[dict[str, Chain], dict[str, Any]]:
    bin_dir = common.make_bin_dir(tmp / "bin", python)
    subnets = common.free_subnets(4, 24)
    state = {"SMARTER_CNI_STATE_DIR": str(tmp / "state")}
    (tmp / "state").mkdir(mode=0o700)
    smarter = {
        "A4": {"type": "smarter-cni", "bridge": f"sdA{run_id}", "subnet": subnets[0]},
        "A46": {"type": "smarter-cni", "bridge": f"sdD{run_id}", "subnet": subnets[1],
                "subnet6": _ula()},
    }

    def reference(key: str, subnet: str, masq: bool) -> dict[str, Any]:
        conf = {"type": "bridge", "bridge": f"sd{key[0]}{run_id}", "isGateway": True,
                "ipam": {"type": "host-local", "dataDir": str(tmp / f"hl-{key}"),
                         "ranges": [[{"subnet": subnet}], [{"subnet": _ula()}]]}}
        if masq:
            conf["ipMasq"] = True
        return conf

    lo = {"type": "loopback"}
    chains = {
        "A4": Chain("smarter-cni IPv4", f"sd-a4-{run_id}", [lo, smarter["A4"]], bin_dir, state),
        "A46": Chain("smarter-cni dual", f"sd-a46-{run_id}", [lo, smarter["A46"]], bin_dir, state),
        "B46": Chain("ref dual ipMasq", f"sd-b46-{run_id}",
                     [lo, reference("B46", subnets[2], True)], bin_dir),
        "C46": Chain("ref dual no-masq", f"sd-c46-{run_id}",
                     [lo, reference("C46", subnets[3], False)], bin_dir),
    }
    return chains, smarter


def purge_ip6tables(marker: str) -> None:
    """The reference bridge's per-pod ip6tables chains, should a DEL not have run."""
    for table in ("nat", "filter"):
        listing = common.sh("ip6tables", "-w", "5", "-t", table, "-S", check=False).stdout.decode()
        for line in listing.splitlines():
            if line.startswith("-A ") and marker in line:
                common.sh("ip6tables", "-w", "5", "-t", table, "-D", *shlex.split(line)[1:],
                          check=False)


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="smarter-cni-dual-"))
    run_id = common.token(5)
    netns = common.Namespaces(f"sdb{run_id}")
    chains, smarter = build(tmp, run_id, args.python)
    live: dict[tuple[str, str], tuple[str, Any]] = {}
    add_t: dict[str, list[float]] = {k: [] for k in KEYS}
    del_t: dict[str, list[float]] = {k: [] for k in KEYS}
    try:
        spaces = {k: netns.create(args.pods + 1) for k in KEYS}
        for key in KEYS:  # warm-up: bridge, rules, page cache; not counted
            cid = f"warm{key}{run_id}"
            _, _, result, _ = chains[key].add(cid, spaces[key][-1])
            chains[key].delete(cid, spaces[key][-1], result)
        if args.verified:  # as on an installed node: the DNS service's reconciler vouches
            for key in ("A4", "A46"):
                (tmp / "state" / f"verified-{chains[key].name}").write_text(str(2e9))
        ids = {k: [f"d{k}{run_id}{i:04d}" for i in range(args.pods)] for k in KEYS}
        for i in range(args.pods):
            for key in (KEYS if i % 2 == 0 else KEYS[::-1]):
                live[(key, ids[key][i])] = (spaces[key][i], None)
                wall, _, result, _ = chains[key].add(ids[key][i], spaces[key][i])
                live[(key, ids[key][i])] = (spaces[key][i], result)
                if key != "A4":
                    assert len([ip for ip in result["ips"] if ":" in ip["address"]
                                and ip["address"] != "::1/128"]) == 1, result
                add_t[key].append(wall)
        for i in range(args.pods):
            for key in (KEYS if i % 2 == 0 else KEYS[::-1]):
                ns, prev = live.pop((key, ids[key][i]))
                wall, _, _ = chains[key].delete(ids[key][i], ns, prev)
                del_t[key].append(wall)
    finally:
        for (key, cid), (ns, prev) in list(live.items()):
            try:
                chains[key].delete(cid, ns, prev)
            except Exception as err:  # keep cleaning
                print(f"cleanup DEL {key}/{cid}: {err}", file=sys.stderr)
        netns.cleanup()
        os.environ["SMARTER_CNI_STATE_DIR"] = str(tmp / "state")
        sys.path.insert(0, str(common.SRC))
        from smarter_cni.dataplane.bridge_network import teardown_network
        from smarter_cni.netconf import parse_netconf

        for key, conf in smarter.items():
            teardown_network(parse_netconf(dict(conf, name=chains[key].name, cniVersion="1.0.0")))
        for key in KEYS:
            common.delete_link(f"sd{key[0]}{run_id}")
        for key in ("b46", "c46"):
            common.purge_iptables(f"sd-{key}-{run_id}")
            purge_ip6tables(f"sd-{key}-{run_id}")
        shutil.rmtree(tmp, ignore_errors=True)
    return {"add": add_t, "del": del_t, "pods": args.pods, "verified": args.verified}


def _stats(values: list[float]) -> str:
    # the mean and p90 too: the reference chain's IPv6 ADD is bimodal (it waits ~50 ms for
    # duplicate address detection on some pods), which a median alone hides
    return (f"{percentile(values, 50) * 1000:6.1f} ms (IQR {percentile(values, 25) * 1000:.1f}-"
            f"{percentile(values, 75) * 1000:.1f}, p90 {percentile(values, 90) * 1000:.1f}, "
            f"mean {sum(values) / len(values) * 1000:.1f})")


def _ratio(a: list[float], b: list[float], blocks: int = 4) -> str:
    whole = percentile(a, 50) / percentile(b, 50)
    size = max(1, len(a) // blocks)
    parts = [percentile(a[i:i + size], 50) / percentile(b[i:i + size], 50)
             for i in range(0, len(a) - size + 1, size)]
    return f"{whole:.2f}x (blocks {min(parts):.2f}-{max(parts):.2f})"


def report(data: dict[str, Any]) -> str:
    lines = [f"dual-stack bench, {data['pods']} pods per chain, interleaved"
             + (", reconciler stamp" if data.get("verified") else "")]
    for op in ("add", "del"):
        for key in KEYS:
            lines.append(f"  {op.upper()} {key:4} {_stats(data[op][key])}")
    for op in ("add", "del"):
        t = data[op]
        lines.append(f"  {op.upper()} A46/A4  {_ratio(t['A46'], t['A4'])}")
        lines.append(f"  {op.upper()} A46/B46 {_ratio(t['A46'], t['B46'])}")
        lines.append(f"  {op.upper()} A46/C46 {_ratio(t['A46'], t['C46'])}")
        mean = {k: sum(v) / len(v) for k, v in t.items()}
        lines.append(f"  {op.upper()} means A46/A4 {mean['A46'] / mean['A4']:.2f}x, "
                     f"A46/B46 {mean['A46'] / mean['B46']:.2f}x, "
                     f"A46/C46 {mean['A46'] / mean['C46']:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=60)
    parser.add_argument("--python", default=common.DEBIAN_PYTHON
                        if os.path.exists(common.DEBIAN_PYTHON) else sys.executable)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--verified", action="store_true",
                        help="write the reconciler's 'rules verified' stamp, as a running DNS "
                             "service does: ADD skips its iptables-save/ip6tables-save look")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces, bridges, iptables)", file=sys.stderr)
        return 2
    data = run(args)
    print(report(data))
    if args.json:
        Path(args.json).write_text(json.dumps(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
