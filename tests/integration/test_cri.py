"""The plugin on kubelet's path: a real containerd 1.6 CRI drives it over gRPC.

One private containerd per module (its own config, root, state and socket
under a temp dir) whose CNI dirs hold our plugin, the reference loopback and
portmap, and a conflist for a unique bridge and subnet; the node DNS service
runs for that network on a unique link-local address. Pods are busybox
sandboxes from an image built in Python and imported with `ctr`. Every call
containerd makes to our plugin is recorded (env, stdin, stdout, exit code)
by a small sh wrapper in front of the launcher, so the tests assert what
containerd really sends, not what we believe it sends.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from test_dns_helpers import DnsService, dig, needs_tools

from helpers.cri import CRIError
from helpers.cri_containerd import CONTAINERD, CTR
from helpers.cri_node import CriNode, Pod, free_link_local, free_subnet, route_device
from helpers.netns import delete_link, sh, unique
from helpers.plugin import teardown_bridge_network
from helpers.portmap import PORTMAP_JUMPS, PORTMAP_TOP_CHAINS, fetch, nat_rules

pytestmark = [
    pytest.mark.root,
    needs_tools,
    pytest.mark.skipif(not (os.path.exists(CONTAINERD) and os.path.exists(CTR)
                            and os.path.exists("/bin/busybox")),
                       reason="needs containerd (with its CRI plugin) and busybox-static"),
]

DOMAIN = "cluster.local"
POOL_PREFIX = 27
POOL_SIZE = 2 ** (32 - POOL_PREFIX) - 3  # less network, gateway and broadcast


def _portmap_chains_exist() -> bool:
    return subprocess.run(["iptables", "-t", "nat", "-S", "CNI-HOSTPORT-DNAT"],
                          capture_output=True).returncode == 0


def _remove_portmap_chains() -> None:
    for jump in PORTMAP_JUMPS:
        subprocess.run(["iptables", "-t", "nat", "-D", *jump], capture_output=True)
    for chain in PORTMAP_TOP_CHAINS:
        subprocess.run(["iptables", "-t", "nat", "-F", chain], capture_output=True)
        subprocess.run(["iptables", "-t", "nat", "-X", chain], capture_output=True)



@pytest.fixture(scope="module")
def node(tmp_path_factory):
    # a /27: 29 pod addresses, so the pool can be run dry through the CRI
    subnet, dns_address = free_subnet(POOL_PREFIX), free_link_local()
    if not subnet or not dns_address:
        pytest.skip("no free 10.244.x.0/24 or 169.254.x.y on this host")
    base = tmp_path_factory.mktemp("cri")
    state_dir = base / "state"
    state_dir.mkdir(mode=0o700)
    name = unique("c")
    network = {"cniVersion": "1.0.0", "name": f"net-{name}", "type": "smarter-cni",
               "bridge": f"br{name[:10]}", "subnet": subnet}
    dns_interface = unique("sdns")
    portmap_existed = _portmap_chains_exist()
    cri = CriNode(base / "node", network, dns_address, state_dir)
    dns = DnsService(base, dns_address, state_dir, cri.conf_path,
                     extra=["--interface", dns_interface])
    try:
        dns.start()
        cri.start()
        print(f"\nCRI node: containerd {cri.client.call('Version').runtime_version}, network "
              f"{network['name']} {subnet} on {network['bridge']}, DNS {dns_address}; "
              + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in cri.timings.items()))
        yield cri
    finally:
        errors = cri.cleanup()
        calls = cri.calls()  # the records outlive containerd's own dir
        for command in ("ADD", "DEL"):
            times = sorted(c.seconds * 1000 for c in calls if c.command == command)
            if times:
                print(f"\nplugin {command} via containerd: {len(times)} calls, median "
                      f"{statistics.median(times):.0f} ms, max {times[-1]:.0f} ms")
        dns.stop()
        delete_link(dns_interface)
        sh("ip", "addr", "del", f"{dns_address}/32", "dev", "lo", check=False)
        teardown_bridge_network(network, state_dir)
        if not portmap_existed:
            _remove_portmap_chains()
        shutil.rmtree(base, ignore_errors=True)
        assert not errors, errors


@pytest.fixture
def pods(node):
    """Pods a test makes; any the test did not remove are stopped and removed after it."""
    made: list[Pod] = []
    yield made
    for pod in made:
        for method in ("StopPodSandbox", "RemovePodSandbox"):
            try:
                node.client.call(method, pod_sandbox_id=pod.id)
            except CRIError as err:
                if err.code != "NOT_FOUND":  # already removed by the test: fine
                    raise


def run_pod(node: CriNode, pods: list[Pod], name: str, **kwargs) -> Pod:
    pod = node.run_pod(name, **kwargs)
    pods.append(pod)
    return pod


def fqdn(pod_or_name: Pod | str, namespace: str = "default") -> str:
    name = pod_or_name.name if isinstance(pod_or_name, Pod) else pod_or_name
    return f"{name}.{namespace}.svc.{DOMAIN}"


def nslookup_addresses(output: str) -> list[str]:
    """The answer addresses of busybox nslookup (not the server's own)."""
    found, answers = [], False
    for line in output.splitlines():
        if line.startswith("Name:"):
            answers = True
        elif answers and line.startswith("Address:"):
            found.append(line.split()[-1])
    return sorted(found)


def in_pool(node: CriNode, address: str) -> bool:
    return ipaddress.ip_address(address) in ipaddress.ip_network(node.network["subnet"])


def assert_on_our_bridge(node: CriNode, *addresses: str) -> None:
    """Traffic to a pod address must go through the test's bridge, never off the machine."""
    for address in addresses:
        assert route_device(address) == node.network["bridge"], address


def assert_gone(node: CriNode, pod: Pod) -> None:
    assert node.attachment_of(pod) is None, node.attachments()
    answer = dig(node.dns_address, fqdn(pod))
    assert answer.status == "NXDOMAIN", answer


# ---------------------------------------------------------------- tests


def test_two_pods_resolve_and_ping_each_other_by_name(node, pods, host_port):
    tag = unique("", 6)
    alpha = run_pod(node, pods, f"alpha-{tag}", hostname=f"ah-{tag}",
                    annotation_hostname=f"ah-{tag}", host_ports={host_port: 8080})
    beta = run_pod(node, pods, f"beta-{tag}", hostname=f"bh-{tag}",
                   annotation_hostname=f"bh-{tag}",
                   annotations={"kubernetes.io/ingress-bandwidth": "10M",
                                "kubernetes.io/egress-bandwidth": "20M"})
    assert in_pool(node, alpha.ip) and in_pool(node, beta.ip) and alpha.ip != beta.ip
    assert_on_our_bridge(node, alpha.ip, beta.ip)
    assert node.attachment_of(alpha)["pod"]["hostname"] == f"ah-{tag}"

    # what containerd handed the plugin: capitalised runtimeConfig keys, and it coped
    add = next(call for call in node.calls(alpha) if call.command == "ADD")
    assert add.returncode == 0, add
    # the installer's conflist lists cniVersions up to 1.1.0; containerd 1.6's libcni
    # predates that list and uses cniVersion
    assert add.stdin["cniVersion"] == "1.0.0" and "1.1.0" in node.conflist["cniVersions"]
    runtime = add.runtime_config
    assert runtime["portMappings"] == [{"HostPort": host_port, "ContainerPort": 8080,
                                        "Protocol": "tcp", "HostIP": ""}], runtime
    assert runtime["dns"]["Servers"] == [node.dns_address], runtime
    assert runtime["io.kubernetes.cri.pod-annotations"] == \
        {"smarter-cni.io/hostname": f"ah-{tag}"}, runtime
    assert json.loads(add.stdout)["ips"][0]["address"] == f"{alpha.ip}/{node.prefix_len}"
    # bandwidth from the pod's annotations, capitalised too (and the annotations themselves)
    add = next(call for call in node.calls(beta) if call.command == "ADD")
    assert add.returncode == 0, add
    assert add.runtime_config["bandwidth"] == {
        "IngressRate": 10_000_000, "IngressBurst": 4294967295,
        "EgressRate": 20_000_000, "EgressBurst": 4294967295}, add.runtime_config
    assert "portMappings" not in add.runtime_config
    assert node.attachment_of(beta)["pod"]["hostname"] == f"bh-{tag}"

    first = node.start_container(alpha)
    second = node.start_container(beta)
    code, resolv, _ = node.exec(first, "cat", "/etc/resolv.conf")
    assert code == 0 and f"nameserver {node.dns_address}" in resolv, resolv
    assert node.exec(first, "hostname")[1].strip() == f"ah-{tag}"
    # containerd's cni-loopback network is set up in the same netns at the same moment
    # (go-cni attaches networks in parallel): the two ADDs overlap in time
    overlaps = []
    for pod in (alpha, beta):
        ours = next(c for c in node.calls(pod) if c.command == "ADD")
        loop = [c for c in node.calls(pod, "loopback") if c.command == "ADD"]
        assert len(loop) == 1 and loop[0].returncode == 0 and loop[0].netns == ours.netns, loop
        overlaps.append(loop[0].started_ns < ours.ended_ns and ours.started_ns < loop[0].ended_ns)
        print(f"\n{pod.name}: loopback ADD {(loop[0].started_ns - ours.started_ns) / 1e6:+.1f}"
              f" .. {(loop[0].ended_ns - ours.started_ns) / 1e6:+.1f} ms, ours 0 .. "
              f"{(ours.ended_ns - ours.started_ns) / 1e6:+.1f} ms")
    assert any(overlaps), overlaps
    code, lo, _ = node.exec(first, "ip", "-4", "addr", "show", "lo")
    assert code == 0 and "127.0.0.1/8" in lo and ",UP" in lo, lo

    lookups = {first: (beta, f"bh-{tag}"), second: (alpha, f"ah-{tag}")}
    for container, (peer, hostname) in lookups.items():
        # exact names (trailing dot: no search list), each form the node DNS serves
        for name in (peer.name, hostname, fqdn(peer), fqdn(hostname)):
            code, out, err = node.exec(container, "nslookup", "-type=a", name + ".")
            assert code == 0 and nslookup_addresses(out) == [peer.ip], (name, out, err)
        # the short name through the search list containerd wrote from dns_config
        # (busybox nslookup asks every search form, so the others' NXDOMAIN is expected)
        code, out, err = node.exec(container, "nslookup", "-type=a", peer.name)
        assert f"Name:\t{fqdn(peer)}\nAddress: {peer.ip}" in out, (out, err)
        code, out, err = node.exec(container, "ping", "-c", "2", "-W", "2", peer.ip)
        assert code == 0 and " 0% packet loss" in out, (out, err)
    code, out, _ = node.exec(second, "nslookup", "-type=a", fqdn(f"nobody-{tag}"))
    assert code != 0 and "NXDOMAIN" in out, out


def test_host_port_reaches_the_pod_from_the_host(node, pods, host_port):
    tag = unique("", 6)
    pod = run_pod(node, pods, f"web-{tag}", hostname=f"web-{tag}", host_ports={host_port: 8080})
    assert_on_our_bridge(node, pod.ip)
    # busybox nc answers each connection with the pod's hostname
    node.start_container(pod, ["/usr/bin/nc", "-ll", "-p", "8080", "-e", "/bin/hostname"])
    gateway = node.attachment_of(pod)["gateway"]
    for address in ("127.0.0.1", gateway):
        deadline, reply = time.monotonic() + 10, ""
        while time.monotonic() < deadline:
            try:
                reply = fetch(address, host_port)
                break
            except OSError:
                time.sleep(0.1)
        assert reply == f"web-{tag}", (address, reply)
    assert fetch(pod.ip, 8080) == f"web-{tag}"  # and the pod itself, straight over the bridge
    assert pod.id in nat_rules()  # portmap's DNAT names the sandbox
    node.stop_pod(pod)
    assert pod.id not in nat_rules()  # and is gone with the first DEL


def test_stop_then_remove_sends_two_dels_and_both_succeed(node, pods):
    """StopPodSandbox: DEL with the netns and prevResult (the pod's name and address
    go). containerd then removes the netns, so every later DEL - a repeated
    StopPodSandbox (kubelet stops a sandbox more than once) and the one of
    RemovePodSandbox - comes with CNI_NETNS empty and no prevResult."""
    tag = unique("", 6)
    pod = run_pod(node, pods, f"gone-{tag}")
    node.start_container(pod)
    record = node.attachment_of(pod)
    assert record and record["ready"], record
    assert dig(node.dns_address, fqdn(pod)).values() == [pod.ip]

    node.stop_pod(pod)
    calls = node.calls(pod)
    assert [call.command for call in calls] == ["ADD", "DEL"], calls
    first = calls[1]
    assert first.netns and first.netns.startswith(f"{node.containerd.state}/"), first
    assert first.stdin.get("prevResult", {}).get("ips"), first.stdin
    assert first.returncode == 0, first
    assert_gone(node, pod)  # released at the first DEL
    assert record["host_ifname"] not in node.host_veths()
    assert pod.id not in nat_rules()

    node.stop_pod(pod)
    node.remove_pod(pod)
    pods.remove(pod)
    calls = node.calls(pod)
    assert [call.command for call in calls] == ["ADD", "DEL", "DEL", "DEL"], calls
    for later in calls[2:]:
        assert later.env.get("CNI_NETNS", "") == "", later.env  # the netns is gone
        assert "prevResult" not in later.stdin, later.stdin
        assert later.returncode == 0 and later.stdout.strip() == "", later
    assert_gone(node, pod)
    print(f"\nDELs containerd sent: Stop: CNI_NETNS={first.netns} with prevResult; "
          f"Stop again, Remove: CNI_NETNS={calls[-1].env.get('CNI_NETNS')!r} without; all exit 0")


def test_pod_survives_a_containerd_restart(node, pods):
    tag = unique("", 6)
    pod = run_pod(node, pods, f"keep-{tag}")
    container = node.start_container(pod)
    before = len(node.calls(pod))
    node.containerd.restart()
    status = node.pod_status(pod)
    assert status.state == 0 and status.network.ip == pod.ip, status  # SANDBOX_READY
    assert len(node.calls(pod)) == before  # no new ADD: the pod was left as it was
    assert dig(node.dns_address, fqdn(pod)).values() == [pod.ip]
    code, out, _ = node.exec(container, "ip", "-4", "addr", "show", "eth0")
    assert code == 0 and f"{pod.ip}/{node.prefix_len}" in out, out
    code, out, _ = node.exec(container, "nslookup", "-type=a", pod.name + ".")
    assert code == 0 and nslookup_addresses(out) == [pod.ip], out
    node.stop_pod(pod)
    node.remove_pod(pod)
    pods.remove(pod)
    assert [c.returncode for c in node.calls(pod)] == [0, 0, 0]
    assert_gone(node, pod)
    print(f"\ncontainerd restart: ready again in {node.containerd.starts[-1] * 1000:.0f} ms")


def test_a_new_sandbox_for_the_same_pod_outlives_the_old_ones_removal(node, pods):
    """kubelet's order when a pod's sandbox must be replaced: stop the old one, run a
    new one (same pod, attempt 1), and only later remove the old one. That late DEL
    (old container ID, empty CNI_NETNS) must not touch the new sandbox's record."""
    tag = unique("", 6)
    old = run_pod(node, pods, f"again-{tag}", annotation_hostname=f"ag-{tag}")
    node.stop_pod(old)
    config = json.loads(json.dumps(old.config))
    config["metadata"]["attempt"] = 1
    new = node.run_sandbox(config)
    pods.append(new)
    assert new.id != old.id and new.uid == old.uid
    node.remove_pod(old)
    pods.remove(old)
    assert [c.command for c in node.calls(old)] == ["ADD", "DEL", "DEL"]
    assert all(c.returncode == 0 for c in node.calls(old))
    record = node.attachment_of(new)
    assert record and record["ready"] and record["pod"]["hostname"] == f"ag-{tag}", record
    for name in (new.name, f"ag-{tag}", fqdn(new)):
        assert dig(node.dns_address, name).values() == [new.ip], name
    assert_on_our_bridge(node, new.ip)
    container = node.start_container(new)
    code, out, err = node.exec(container, "ping", "-c", "1", "-W", "2", record["gateway"])
    assert code == 0, (out, err)


def test_containerd_killed_while_sandboxes_start_leaves_nothing_once_they_are_removed(node, pods):
    """containerd SIGKILLed with 10 RunPodSandbox calls in flight (some plugin ADDs done,
    some running, some not begun). After its restart it knows every sandbox (NOTREADY);
    kubelet's Stop + Remove of each must leave no address, name, veth or netns behind."""
    tag = unique("", 6)
    begun = node.started_calls()
    with ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(node.run_pod, f"crash{index}-{tag}") for index in range(10)]
        deadline = time.monotonic() + 30
        while node.started_calls() < begun + 4 and time.monotonic() < deadline:
            time.sleep(0.005)
        node.containerd.kill()
        failed = sum(1 for future in futures if future.exception() is not None)
    node.containerd.start()
    known = [item for item in node.client.call("ListPodSandbox").items
             if item.metadata.name.endswith(f"-{tag}")]
    ours = [c for c in node.calls() if c.cni_args.get("K8S_POD_NAME", "").endswith(f"-{tag}")]
    print(f"\ncontainerd killed: {failed}/10 RunPodSandbox calls failed, {len(known)} sandboxes "
          f"known after the restart, states {sorted(item.state for item in known)}")
    assert failed >= 1 and known  # the kill really landed mid-way
    for item in known:
        node.client.call("StopPodSandbox", pod_sandbox_id=item.id)
        node.client.call("RemovePodSandbox", pod_sandbox_id=item.id)
    deadline = time.monotonic() + 20  # plugin runs orphaned by the kill finish on their own
    while node.running_calls() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert node.running_calls() == 0
    assert node.attachments() == {}, node.attachments()
    assert node.host_veths() == []
    leftover = [c.netns for c in node.calls() if c.netns and os.path.exists(c.netns)]
    assert not leftover, leftover  # no netns a plugin ever saw
    # containerd 1.6 itself may leak a netns it made just before the kill, for a sandbox
    # it never recorded and never called a plugin for (it lies under our state dir)
    orphans = list((node.containerd.state / "io.containerd.grpc.v1.cri" / "netns").glob("*"))
    print(f"netns containerd left without any CNI call: {len(orphans)}")
    for index in range(10):
        assert dig(node.dns_address, fqdn(f"crash{index}-{tag}")).status == "NXDOMAIN"
    assert any(c.command == "ADD" and c.returncode == 0 for c in ours)  # some got that far
    assert all(c.returncode == 0 for c in ours if c.command == "DEL"), ours


def test_ten_sandboxes_in_parallel(node, pods):
    tag = unique("", 6)
    names = [f"par{index}-{tag}" for index in range(10)]
    started = time.monotonic()
    with ThreadPoolExecutor(len(names)) as pool:
        made = list(pool.map(lambda name: node.run_pod(name), names))
    ran = time.monotonic() - started
    pods.extend(made)
    addresses = [pod.ip for pod in made]
    assert len(set(addresses)) == len(made) and all(addresses), addresses
    assert_on_our_bridge(node, *addresses)
    for pod in made:
        assert dig(node.dns_address, fqdn(pod)).values() == [pod.ip], pod.name
        assert dig(node.dns_address, pod.name).values() == [pod.ip], pod.name
    assert len(node.host_veths()) >= len(made)

    def stop_and_remove(pod: Pod) -> None:
        node.stop_pod(pod)
        node.remove_pod(pod)

    started = time.monotonic()
    with ThreadPoolExecutor(len(made)) as pool:
        list(pool.map(stop_and_remove, made))
    removed = time.monotonic() - started
    pods.clear()
    for pod in made:
        assert [c.command for c in node.calls(pod)] == ["ADD", "DEL", "DEL"], pod.name
        assert all(c.returncode == 0 for c in node.calls(pod)), node.calls(pod)
        assert_gone(node, pod)
    assert node.attachments() == {}
    assert node.host_veths() == []
    calls = [call for pod in made for call in node.calls(pod)]
    plugin = {command: statistics.median(c.seconds for c in calls if c.command == command)
              for command in ("ADD", "DEL")}
    print(f"\n10 sandboxes in parallel: run {ran * 1000:.0f} ms, stop+remove "
          f"{removed * 1000:.0f} ms; the plugin's median ADD {plugin['ADD'] * 1000:.0f} ms, "
          f"DEL {plugin['DEL'] * 1000:.0f} ms (10 at once on a shared 2-core host)")


def test_update_runtime_config_pod_cidr_and_what_the_plugin_then_receives(node, pods):
    """kubelet sends the node's pod CIDR with UpdateRuntimeConfig. containerd 1.6 only
    uses it to render a `conf_template` (none here); it never passes ipRanges to a
    plugin, even one that asks for the capability. The plugin keeps its own subnet."""
    pod_cidr = "10.88.77.0/24"
    node.client.call("UpdateRuntimeConfig",
                     runtime_config={"network_config": {"pod_cidr": pod_cidr}})
    tag = unique("", 6)
    pod = run_pod(node, pods, f"cidr-{tag}")
    add = next(call for call in node.calls(pod) if call.command == "ADD")
    assert add.returncode == 0, add
    assert add.stdin["capabilities"]["ipRanges"] is True
    assert "ipRanges" not in add.runtime_config, add.runtime_config
    # no port mappings: no portMappings key; no annotations: a JSON null, not {}
    assert add.runtime_config == {
        "dns": {"Servers": [node.dns_address],
                "Searches": ["default.svc.cluster.local", "svc.cluster.local", DOMAIN],
                "Options": ["ndots:5"]},
        "io.kubernetes.cri.pod-annotations": None}, add.runtime_config
    assert in_pool(node, pod.ip) and ipaddress.ip_address(pod.ip) not in \
        ipaddress.ip_network(pod_cidr), pod.ip
    cni_args = add.cni_args
    assert cni_args["K8S_POD_NAME"] == pod.name and cni_args["K8S_POD_UID"] == pod.uid
    assert cni_args["K8S_POD_INFRA_CONTAINER_ID"] == pod.id
    assert "No cni config template is specified" in node.containerd.log.read_text()
    print(f"\nafter UpdateRuntimeConfig(pod_cidr={pod_cidr}) the plugin got runtimeConfig="
          f"{json.dumps(add.runtime_config, sort_keys=True)} CNI_ARGS={add.env['CNI_ARGS']}")


def test_a_full_pool_fails_run_pod_sandbox_cleanly(node, pods):
    """The pool runs dry: RunPodSandbox fails with the plugin's own message, containerd's
    clean-up DEL succeeds, nothing of the failed sandbox stays, and the pool works again
    as soon as one pod goes."""
    tag = unique("", 6)
    assert node.attachments() == {}
    with ThreadPoolExecutor(10) as pool:
        made = list(pool.map(lambda index: node.run_pod(f"fill{index}-{tag}"), range(POOL_SIZE)))
    pods.extend(made)
    assert len({pod.ip for pod in made}) == POOL_SIZE
    veths = node.host_veths()
    with pytest.raises(CRIError) as failed:
        node.run_pod(f"extra-{tag}")
    message = failed.value.details
    assert "no free address left" in message and node.network["name"] in message, message
    refused = [call for call in node.calls() if call.command == "ADD" and call.returncode != 0]
    assert len(refused) == 1, refused
    error = json.loads(refused[0].stdout)
    assert error["code"] == 100 and error["msg"] in message, (error, message)
    cleanup = node.calls(Pod(refused[0].container_id, "", "", "", "", {}))[1:]
    assert cleanup and all(c.command == "DEL" and c.returncode == 0 for c in cleanup), cleanup
    assert len(node.attachments()) == POOL_SIZE and node.host_veths() == veths
    assert not os.path.exists(refused[0].netns)  # containerd removed the failed pod's netns
    assert dig(node.dns_address, fqdn(f"extra-{tag}")).status == "NXDOMAIN"
    print(f"\nfull pool through the CRI: {failed.value.code}: {message}")

    node.stop_pod(made[0])
    node.remove_pod(made[0])
    pods.remove(made[0])
    again = run_pod(node, pods, f"again-{tag}")
    assert in_pool(node, again.ip)
    with ThreadPoolExecutor(10) as pool:
        list(pool.map(lambda pod: (node.stop_pod(pod), node.remove_pod(pod)), pods))
    pods.clear()
    assert node.attachments() == {} and node.host_veths() == []


def test_containerd_logged_no_network_error(node):
    """Last in the module: over every case above, containerd never failed a CNI call
    (but the one ADD the full-pool test made fail on purpose)."""
    lines = node.containerd.log.read_text(errors="replace").splitlines()
    assert any("containerd successfully booted" in line for line in lines)  # the right log
    failures = [line for line in lines if "level=error" in line
                and ("network" in line.lower() or "cni" in line.lower())
                and "no free address left" not in line]
    assert not failures, "\n".join(failures[:10])
