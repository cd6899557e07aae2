"""The warm resident server's memory over many requests (issue 16): does it grow?

    sudo /usr/bin/python3 bench/resident_rss.py --requests 1000

One warm server on its own state dir and bridge network; the thin client execs ADD
then DEL of a new pod, again and again, in one network namespace. The server's
VmRSS is read every 100 requests, and how many requests it served (its --verbose
lines) is counted: a request that fell back in-process does not test the server.
Everything made is removed in `finally`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def vm_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--python", default=common.DEBIAN_PYTHON if os.path.exists(
        common.DEBIAN_PYTHON) else sys.executable)
    parser.add_argument("--src", type=Path, default=common.SRC)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (netns, bridges)")
    run_id = common.token(6)
    tmp = Path(tempfile.mkdtemp(prefix="smarter-cni-rss-"))
    src = args.src.resolve()
    bin_dir = common.make_bin_dir(tmp / "bin", args.python, src)
    namespaces = common.Namespaces(f"scr{run_id}")
    state = tmp / "state"
    state.mkdir(mode=0o700)
    conf = {"cniVersion": "1.0.0", "name": f"scr-{run_id}", "type": "smarter-cni",
            "bridge": f"scr{run_id}", "subnet": common.free_subnets(1, 24)[0]}
    log = tmp / "server.log"
    server = None
    samples: list[tuple[int, int]] = []
    try:
        server = common.start_resident(args.python, src, state, "warm", log)
        netns = namespaces.create(1)[0]
        program = str(bin_dir / "smarter-cni")
        stdin = json.dumps(conf).encode()
        extra = {"SMARTER_CNI_STATE_DIR": str(state)}
        samples.append((0, vm_rss_kb(server.pid)))
        done = 0
        while done < args.requests:
            cid = f"r{done}{run_id}"  # host veth names derive from it
            for command in ("ADD", "DEL"):
                result = common.exec_plugin(program, common.cni_env(command, bin_dir, cid, netns,
                                                                    extra=extra), stdin)
                if not result.ok:
                    raise RuntimeError(f"{command}: {result.describe()}")
                done += 1
                if done % 100 == 0:
                    samples.append((done, vm_rss_kb(server.pid)))
        served = len(common.served_requests(log))
    finally:
        if server is not None and server.poll() is None:
            server.terminate()  # our own child, by its PID
            server.wait(10)
        namespaces.cleanup()
        os.environ["SMARTER_CNI_STATE_DIR"] = str(state)
        sys.path.insert(0, str(src))
        try:
            from smarter_cni.dataplane.bridge_network import teardown_network
            from smarter_cni.netconf import parse_netconf

            teardown_network(parse_netconf(conf))
        except Exception as err:  # keep cleaning
            print(f"teardown: {err}", file=sys.stderr)
        common.purge_iptables(run_id)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"warm server VmRSS over {args.requests} requests ({served} served by the server, "
          f"the rest fell back in-process)")
    print(common.table(["requests", "VmRSS KB"], [[n, kb] for n, kb in samples]))
    first_after = samples[1][1] if len(samples) > 1 else samples[0][1]
    print(f"growth from request 100 to {samples[-1][0]}: {samples[-1][1] - first_after} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
