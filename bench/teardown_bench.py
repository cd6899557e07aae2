"""A network's firewall teardown, this checkout against a git revision (default `main`).

Per round, for an IPv4 and a dual-stack network each: `firewall.ensure` makes the rules,
then one of the two `firewall.teardown`s removes them (timed), then `ensure` again and the
other one (order random per round). The old module is `git show REV:...firewall.py`,
loaded beside the new one. Unique network names, a free 10.244.x.0/24 and a random ULA
/64; rules left are removed at the end. Root; real iptables of the host's netns.

    python3 bench/teardown_bench.py --rounds 15 [--against main]
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import common  # noqa: E402

from smarter_cni.dataplane import firewall  # noqa: E402
from smarter_cni.netconf import parse_netconf  # noqa: E402

FIREWALL = "src/smarter_cni/dataplane/firewall.py"


def old_firewall(revision: str):
    """`revision`'s firewall module, loaded as smarter_cni.dataplane.firewall_old."""
    text = subprocess.run(["git", "-C", str(ROOT), "show", f"{revision}:{FIREWALL}"],
                          capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "firewall_old.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("smarter_cni.dataplane.firewall_old", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--against", default="main", help="git revision of the old code")
    args = parser.parse_args()
    old = old_firewall(args.against)
    token = uuid.uuid4().hex[:8]
    subnet4, subnet_dual = common.free_subnets(2, 24, "10.244")
    ula = f"fd{random.randint(0, 255):02x}:{random.randint(1, 0xFFFF):x}:{random.randint(1, 0xFFFF):x}::/64"
    confs = {
        "ipv4": parse_netconf({"cniVersion": "1.0.0", "name": f"net-tdb4{token}", "type": "smarter-cni",
                               "bridge": f"brtdb4{token}", "subnet": subnet4}),
        "dual-stack": parse_netconf({"cniVersion": "1.0.0", "name": f"net-tdb6{token}",
                                     "type": "smarter-cni", "bridge": f"brtdb6{token}",
                                     "subnet": subnet_dual, "subnet6": ula}),
    }
    times: dict[tuple[str, str], list[float]] = {(k, v): [] for k in confs for v in ("old", "new")}
    try:
        for _ in range(args.rounds):
            for kind, conf in confs.items():
                order = [("old", old), ("new", firewall)]
                random.shuffle(order)
                for version, module in order:
                    firewall.ensure(conf)
                    assert firewall.present(conf) == []
                    started = time.perf_counter()
                    module.teardown(conf)
                    times[(kind, version)].append((time.perf_counter() - started) * 1000)
                    assert len(firewall.present(conf)) >= 3  # the rules are gone
    finally:
        for conf in confs.values():
            firewall.teardown(conf)
    print(f"firewall.teardown, ms, median (min-max) of {args.rounds} interleaved rounds")
    for kind in confs:
        cells = []
        for version in ("old", "new"):
            values = times[(kind, version)]
            cells.append(f"{version} {statistics.median(values):.1f} "
                         f"({min(values):.1f}-{max(values):.1f})")
        print(f"{kind}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
