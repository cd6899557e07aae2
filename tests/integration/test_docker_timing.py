"""Docker mode under load: concurrent ADDs, and ADD/DEL wall time per pod.

The timings are printed (run with -s to see them) and bounded generously:
most of an ADD is dockerd's own work (veth, IPAM, iptables, its DNS).
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers.plugin import pod_args
from smarter_cni.dataplane import docker_mode
from smarter_cni.netconf import parse_netconf

pytest_plugins = ("helpers.dockerd",)
pytestmark = [pytest.mark.root, pytest.mark.docker]

ROUNDS = 20


@pytest.fixture
def net(docker_network):
    docker_mode.ensure_network(parse_netconf(docker_network))
    return docker_network


def test_concurrent_adds_get_distinct_addresses(plugin, net, sandboxes, dockerd, state_dir):
    pods = [sandboxes.create(f"c{i}") for i in range(8)]

    def add(index: int):
        pod = pods[index]
        return plugin("ADD", net, pod.id, pod.netns, args=pod_args(f"c{index}"))

    with ThreadPoolExecutor(len(pods)) as pool:
        outs = list(pool.map(add, range(len(pods))))
    assert all(out.ok for out in outs), [o for o in outs if not o.ok]
    addresses = [out.json["ips"][0]["address"] for out in outs]
    assert len(set(addresses)) == len(pods)
    attachments = json.loads((state_dir / "attachments.json").read_text())["attachments"]
    assert sorted(r["ips"][0] for r in attachments.values()) == sorted(addresses)
    assert all(r["ready"] for r in attachments.values())

    with ThreadPoolExecutor(len(pods)) as pool:
        dels = list(pool.map(lambda p: plugin("DEL", net, p.id, p.netns), pods))
    assert all(out.ok for out in dels), [o for o in dels if not o.ok]
    attachments = json.loads((state_dir / "attachments.json").read_text())["attachments"]
    assert attachments == {}


def test_add_del_timing(plugin, net, sandboxes, dockerd):
    pods = [sandboxes.create(f"t{i}") for i in range(ROUNDS)]
    add_ms, del_ms = [], []
    for index, pod in enumerate(pods):
        args = pod_args(f"t{index}", uid=str(uuid.uuid4()))
        start = time.perf_counter()
        out = plugin("ADD", net, pod.id, pod.netns, args=args)
        add_ms.append((time.perf_counter() - start) * 1000)
        assert out.ok, out
    for pod in pods:
        start = time.perf_counter()
        out = plugin("DEL", net, pod.id, pod.netns)
        del_ms.append((time.perf_counter() - start) * 1000)
        assert out.ok, out
    add_median, del_median = statistics.median(add_ms), statistics.median(del_ms)
    print(f"\ndocker mode over {ROUNDS} pods: ADD median {add_median:.0f} ms "
          f"(min {min(add_ms):.0f}, max {max(add_ms):.0f}); DEL median {del_median:.0f} ms "
          f"(min {min(del_ms):.0f}, max {max(del_ms):.0f})")
    assert add_median < 2000 and del_median < 2000
