"""Run inside a docker-mode pod's netns: watch a fault break the pod's names, then heal.

    python3 docker_heal_probe.py NODE_DNS NODE_NAME DOCKER_NAME EXPECTED_IP DEADLINE_SECONDS

Each round (every 0.1 s, 0.25 s timeout each) asks the node DNS for
NODE_NAME and Docker's embedded DNS (127.0.0.11) for DOCKER_NAME, both must
answer EXPECTED_IP, and pings EXPECTED_IP (the other pod). Prints one JSON
line: {"first_ok", "broken": monotonic time of the first failed round,
"healed": of the first good round after it (null if none), "rounds",
"failed": which checks failed in the first failed round}. Stops once healed.
"""

from __future__ import annotations

import json
import sys
import time

from heal_probe import ping, resolve


def main() -> int:
    node_dns, node_name, docker_name, expected, limit = sys.argv[1:6]
    deadline = time.monotonic() + float(limit)
    rounds = 0
    first_ok = broken = healed = None
    failed: list[str] = []
    while time.monotonic() < deadline:
        rounds += 1
        started = time.monotonic()
        checks = {"node DNS": resolve(node_dns, node_name, expected),
                  "Docker DNS": resolve("127.0.0.11", docker_name, expected),
                  "ping": ping(expected, rounds)}
        ok = all(checks.values())
        if first_ok is None:
            first_ok = ok
        if not ok and broken is None:
            broken, failed = started, [name for name, good in checks.items() if not good]
        if ok and broken is not None:
            healed = time.monotonic()
            break
        print(json.dumps({"round": rounds, "ok": ok}), flush=True)  # the test waits for one
        time.sleep(max(0.0, 0.1 - (time.monotonic() - started)))
    print(json.dumps({"first_ok": first_ok, "broken": broken, "healed": healed,
                      "rounds": rounds, "failed": failed}))
    return 0 if healed else 1


if __name__ == "__main__":
    sys.exit(main())
