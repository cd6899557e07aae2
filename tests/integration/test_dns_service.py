"""The node DNS service as a real process on a loopback address, asked by real `dig`.

Records are written through the real store (temp file + rename), as the
plugin does; test_dns_pods.py drives the plugin itself.
"""

from __future__ import annotations

import random
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_dns_helpers import (
    SRC,
    DnsNode,
    DnsService,
    free_port,
    needs_tools,
    unique_loopback,
    write_conflist,
)

pytestmark = [pytest.mark.root, needs_tools]


@pytest.fixture
def env(tmp_path, state_dir):
    env = DnsNode(tmp_path, state_dir)
    try:
        yield env
    finally:
        env.cleanup()


NAME_FORMS = ["web", "web.default", "web.default.svc.cluster.local",
              "web-0", "web-0.default", "web-0.default.svc.cluster.local"]


@pytest.mark.parametrize("transport", ["+notcp", "+tcp"])
def test_every_name_form_over_udp_and_tcp(env, transport):
    env.registry.add("c1", "web", "10.99.0.5", hostname="web-0")
    env.start()
    for name in NAME_FORMS:
        answer = env.dig(name, transport)
        assert answer.status == "NOERROR", (name, answer)
        assert "aa" in answer.flags
        assert answer.values() == ["10.99.0.5"], (name, answer)
    upper = env.dig("WEB.Default.SVC.Cluster.Local", transport)
    assert upper.values() == ["10.99.0.5"] and "WEB.Default" in upper.stdout  # case echoed


def test_several_pods_with_one_name_give_several_a_records(env):
    for index in range(3):
        env.registry.add(f"c{index}", "web", f"10.99.0.{10 + index}")
    env.registry.add("other", "db", "10.99.0.20")
    env.start()
    answer = env.dig("web.default.svc.cluster.local")
    assert answer.values() == ["10.99.0.10", "10.99.0.11", "10.99.0.12"]
    assert env.dig("db").values() == ["10.99.0.20"]


def test_ptr_for_a_pod_address(env):
    env.registry.add("c1", "web", "10.99.0.5", namespace="prod", hostname="web-0")
    env.start()
    answer = env.dig("-x", "10.99.0.5")
    assert answer.status == "NOERROR"
    assert answer.values("PTR") == ["web-0.prod.svc.cluster.local", "web.prod.svc.cluster.local"]
    assert env.dig("-x", "10.99.7.7").status == "NXDOMAIN"


def test_unknown_cluster_names_nxdomain_and_aaaa_empty(env):
    env.registry.add("c1", "web", "10.99.0.5")
    env.start()
    for name in ("nope.default.svc.cluster.local", "web.other.svc.cluster.local",
                 "a.b.c.cluster.local"):
        answer = env.dig(name)
        assert answer.status == "NXDOMAIN" and "aa" in answer.flags, (name, answer)
    aaaa = env.dig("web.default.svc.cluster.local", "AAAA")
    assert aaaa.status == "NOERROR" and aaaa.counts.get("ANSWER") == 0, aaaa
    assert env.dig("web", "AAAA").status == "NOERROR"


def test_names_resolve_the_instant_they_are_written_and_vanish_on_removal(env):
    env.start()
    for index in range(25):
        name = f"pod-{index}"
        env.registry.add(f"c{index}", name, f"10.99.1.{index + 1}")
        # no sleep: the rename has happened, so the answer must already be there
        answer = env.dig(f"{name}.default.svc.cluster.local")
        assert answer.values() == [f"10.99.1.{index + 1}"], (index, answer)
        env.registry.remove(f"c{index}")
        gone = env.dig(f"{name}.default.svc.cluster.local")
        assert gone.status == "NXDOMAIN", (index, gone)


def test_a_restart_keeps_every_name(env):
    for index in range(20):
        env.registry.add(f"c{index}", f"app-{index}", f"10.99.2.{index + 1}", save=False)
    env.registry.save()
    service = env.start()
    assert env.dig("app-7.default").values() == ["10.99.2.8"]
    assert service.stop() == 0  # SIGTERM is a clean exit
    env.start()
    for index in range(20):
        assert env.dig(f"app-{index}.default.svc.cluster.local").values() == \
            [f"10.99.2.{index + 1}"]


def test_forwarding_and_servfail_when_the_upstream_stops(env):
    upstream = env.dnsmasq({"fwd.test": "192.0.2.7", "other.test": "192.0.2.8"},
                           extra=["--address=/nothing.test/"])  # NXDOMAIN for that domain
    env.start(upstreams=[upstream.upstream], extra=["--upstream-timeout", "0.5"])
    answer = env.dig("fwd.test")
    assert answer.status == "NOERROR" and answer.values() == ["192.0.2.7"], answer
    assert "aa" not in answer.flags
    assert env.dig("fwd.test", "+tcp").values() == ["192.0.2.7"]
    assert env.dig("nothing.test").status == "NXDOMAIN"
    upstream.stop()
    # cached: still answered while the TTL lasts (dnsmasq gives host records TTL 0,
    # so nothing is cached and the next query goes upstream)
    failed = env.dig("other.test", timeout=3)
    assert failed.status == "SERVFAIL", failed
    assert env.dig("web.default.svc.cluster.local").status == "NXDOMAIN"  # still serving


def test_a_dead_upstream_is_skipped_at_once(env):
    """A closed port answers with ICMP unreachable: no need to wait out the time-out."""
    upstream = env.dnsmasq({"alive.test": "192.0.2.5"})
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    env.start(upstreams=[dead, upstream.upstream], extra=["--upstream-timeout", "2"])
    started = time.monotonic()
    assert env.dig("alive.test").values() == ["192.0.2.5"]
    assert time.monotonic() - started < 1.5  # well under the 2 s time-out
    upstream.stop()
    started = time.monotonic()
    assert env.dig("alive.test", timeout=5).status == "SERVFAIL"
    assert time.monotonic() - started < 1.5


def test_forwarded_answers_are_cached_with_their_ttl(env):
    upstream = env.dnsmasq({"cached.test": "192.0.2.9"}, extra=["--local-ttl=30"])
    env.start(upstreams=[upstream.upstream], extra=["--upstream-timeout", "0.5"])
    assert env.dig("cached.test").values() == ["192.0.2.9"]
    upstream.stop()
    time.sleep(2.1)
    again = env.dig("CACHED.test")
    assert again.values() == ["192.0.2.9"], again  # from the cache: the upstream is gone
    ttl = int(next(line.split()[1] for line in again.stdout.splitlines()
                   if line and not line.startswith(";")))
    assert 25 <= ttl <= 28, again  # counted down while cached


def test_a_large_forwarded_answer_is_fetched_over_tcp_from_upstream(env, tmp_path):
    hosts = tmp_path / "many.hosts"
    hosts.write_text("".join(f"192.0.2.{i} many.test\n" for i in range(1, 101)))
    upstream = env.dnsmasq({}, extra=[f"--addn-hosts={hosts}"])
    env.start(upstreams=[upstream.upstream])
    for args in (("+tcp",), ("+bufsize=4096",), ("+noedns",)):  # the last: TC, then TCP
        answer = env.dig("many.test", *args)
        assert answer.status == "NOERROR" and len(answer.values()) == 100, (args, answer)
    truncated = env.dig("many.test", "+noedns", "+ignore")
    assert "tc" in truncated.flags, truncated
    from smarter_cni.dns import metrics

    status, text = metrics.fetch(env.listen, path="/metrics")
    retries = metrics.parse_text(text)["smarter_cni_dns_forward_tcp_retries_total"]
    assert status == 200 and retries[0][1] >= 1, retries  # dnsmasq's 1232-byte UDP answer had TC


def test_upstreams_follow_changes_of_resolv_conf(env, tmp_path):
    first = env.dnsmasq({"moved.test": "192.0.2.1"}, address=unique_loopback(), port=53)
    second = env.dnsmasq({"moved.test": "192.0.2.2"}, address=unique_loopback(), port=53)
    resolv = tmp_path / "node-resolv.conf"
    resolv.write_text(f"nameserver {env.listen}\nnameserver {first.address}\n")  # we are skipped
    service = DnsService(env.tmp_path, env.listen, env.state_dir, env.conf,
                         extra=["--no-address-setup", "--resolv-conf", str(resolv)])
    env.track(service)
    service.start()
    assert env.dig("moved.test").values() == ["192.0.2.1"]
    temp = tmp_path / "node-resolv.conf.new"
    temp.write_text(f"nameserver {second.address}\n")
    temp.replace(resolv)
    deadline = time.monotonic() + 5
    while env.dig("moved.test").values() != ["192.0.2.2"]:
        assert time.monotonic() < deadline, "resolv.conf change not followed"
        time.sleep(0.2)


def test_truncation_over_udp_and_the_full_answer_over_tcp(env):
    for index in range(100):
        env.registry.add(f"c{index}", "big", f"10.99.3.{index + 1}", save=False)
    env.registry.save()
    env.start()
    plain = env.dig("big.default", "+noedns", "+ignore")
    assert "tc" in plain.flags and plain.counts.get("ANSWER") == 0, plain
    edns = env.dig("big.default", "+bufsize=1232", "+ignore")
    assert "tc" in edns.flags, edns  # 100 records do not fit 1232 bytes either
    big_buffer = env.dig("big.default", "+bufsize=4096", "+ignore")
    assert "tc" not in big_buffer.flags and len(big_buffer.values()) == 100
    tcp = env.dig("big.default", "+tcp")
    assert "tc" not in tcp.flags and len(tcp.values()) == 100
    retried = env.dig("big.default", "+noedns")  # dig retries over TCP by itself
    assert len(retried.values()) == 100


def _send_garbage(address: str, count: int, seed: int) -> None:
    rng = random.Random(seed)
    good = (struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 1) + b"\x03web\x07default\x00"
            + struct.pack("!HH", 1, 1) + b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for index in range(count):
            kind = index % 4
            if kind == 0:
                packet = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 600)))
            elif kind == 1:
                packet = good[:rng.randint(0, len(good) - 1)]
            elif kind == 2:
                mutated = bytearray(good)
                for _ in range(3):
                    mutated[rng.randrange(len(mutated))] = rng.getrandbits(8)
                packet = bytes(mutated)
            else:  # a response (QR set), and compression pointer games
                packet = struct.pack("!HHHHHH", 2, 0x8000 | rng.getrandbits(15), 1, 0, 0, 0) \
                    + b"\xc0\x0c" * rng.randint(1, 5)
            sock.sendto(packet, (address, 53))
    finally:
        sock.close()


def test_a_burst_of_malformed_packets_leaves_it_answering(env):
    env.registry.add("c1", "web", "10.99.0.5")
    service = env.start()
    _send_garbage(env.listen, 5000, seed=7)
    # TCP: garbage frames, a short length, a frame cut off mid-way, and a silent client
    for payload in (b"\x00\x05hello", b"\x00", b"\x00\x40" + b"\x01" * 20,
                    b"\xff\xff" + bytes(300)):
        with socket.create_connection((env.listen, 53), timeout=2) as conn:
            conn.sendall(payload)
    assert service.proc.poll() is None
    answer = env.dig("web.default")
    assert answer.values() == ["10.99.0.5"]
    formerr = subprocess.run(
        [sys.executable, "-c",
         "import socket,struct;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
         "s.settimeout(2);s.sendto(struct.pack('!HHHHHH',9,0x100,1,0,0,0)+b'\\x03we',"
         f"('{env.listen}',53));print(s.recv(512)[3]&15)"],
        capture_output=True, text=True, timeout=10)
    assert formerr.stdout.strip() == "1"  # FORMERR for a cut-off question


def test_many_idle_tcp_clients_cannot_lock_others_out(env):
    env.registry.add("c1", "web", "10.99.0.5")
    env.start()
    idle = []
    try:
        for _ in range(150):  # more than the connection limit, each silent
            idle.append(socket.create_connection((env.listen, 53), timeout=2))
        answer = env.dig("web.default", "+tcp")
        assert answer.values() == ["10.99.0.5"], answer
    finally:
        for conn in idle:
            conn.close()


def test_several_queries_on_one_tcp_connection(env):
    env.registry.add("c1", "web", "10.99.0.5")
    env.registry.add("c2", "db", "10.99.0.6")
    env.start()
    with socket.create_connection((env.listen, 53), timeout=2) as conn:
        frames = b""
        for qid, name in ((1, b"\x03web"), (2, b"\x02db"), (3, b"\x04nope")):
            query = (struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + name
                     + b"\x07default\x00" + struct.pack("!HH", 1, 1))
            frames += len(query).to_bytes(2, "big") + query
        conn.sendall(frames)  # pipelined, in one segment
        got = {}
        buffer = b""
        while len(got) < 3:
            buffer += conn.recv(4096)
            while len(buffer) >= 2 and len(buffer) >= 2 + int.from_bytes(buffer[:2], "big"):
                size = int.from_bytes(buffer[:2], "big")
                message, buffer = buffer[2:2 + size], buffer[2 + size:]
                got[struct.unpack("!H", message[:2])[0]] = message
    assert got[1][-4:] == socket.inet_aton("10.99.0.5")
    assert got[2][-4:] == socket.inet_aton("10.99.0.6")


def test_a_host_process_resolves_pod_names_through_the_dns_address(env, tmp_path):
    """A host-network process with the DNS address as its resolver (glibc, not dig)."""
    env.registry.add("c1", "web", "10.99.0.5")
    env.start()
    script = ("import socket,sys; print(socket.gethostbyname(sys.argv[1]))")
    resolv = tmp_path / "host-resolv.conf"
    resolv.write_text(f"nameserver {env.listen}\nsearch default.svc.cluster.local\n"
                      "options ndots:5 timeout:2 attempts:1\n")
    # a private mount namespace so only this process sees the test resolv.conf
    done = subprocess.run(
        ["unshare", "--mount", "sh", "-c",
         f"mount --bind {resolv} /etc/resolv.conf && exec {sys.executable} -c '{script}' web"],
        capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "10.99.0.5"


def test_bad_settings_give_a_clear_message_not_a_traceback(tmp_path, state_dir):
    env_vars = {"PYTHONPATH": str(SRC), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    empty_dir = tmp_path / "empty-net.d"
    empty_dir.mkdir()
    config_dir = tmp_path / "net.d"
    config_dir.mkdir()
    config = str(write_conflist(config_dir))
    cases = [
        (["--config", str(tmp_path / "missing.conflist")], "cannot read network config"),
        (["--cni-conf-dir", str(empty_dir)], "no smarter-cni network config"),
        (["--config", config, "--listen", "nonsense"], "IPv4"),
        (["--config", config, "--listen", "192.0.2.250", "--no-address-setup"],
         "not an address of this node"),
        (["--config", config, "--listen", "127.0.0.1", "--upstream", "x:y"], "--upstream"),
        # an IPv6 address the node lacks, with the IPv4 one already there (documentation
        # prefix, never assigned here): once an UnboundLocalError traceback
        (["--config", config, "--listen", "127.0.0.1", "--port", str(free_port()),
          "--metrics", "off", "--no-address-setup", "--listen6", "2001:db8:53::53"],
         "cannot listen on [2001:db8:53::53]"),
    ]
    for args, expected in cases:
        done = subprocess.run([sys.executable, "-m", "smarter_cni.dns", *args,
                               "--state-dir", str(state_dir)],
                              capture_output=True, text=True, env=env_vars, timeout=20)
        assert done.returncode == 2, (args, done.stderr)
        assert expected in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)


def test_the_service_goes_on_in_a_lean_interpreter_and_stays_small(env, monkeypatch):
    """Options parsed, it re-executes itself as `python -I -S` (same PID); with 250
    pods it stays under 15 MB (16.1 MB before the footprint work; ~11.7 MB measured
    with bytecode in place, docs/dns.md)."""
    for index in range(250):
        env.registry.add(f"c{index}", f"pod-{index}", f"10.99.{index // 250}.{index % 250 + 2}",
                         save=False)
    env.registry.save()
    service = env.start()
    assert env.dig("pod-7.default").values() == ["10.99.0.9"]
    cmdline = Path(f"/proc/{service.pid}/cmdline").read_bytes().split(b"\0")
    assert b"-I" in cmdline and b"-S" in cmdline and b"--parsed-settings" in cmdline, cmdline
    time.sleep(0.5)
    assert service.rss_kib() < 15 * 1024, service.rss_kib()
    service.stop()

    plain = DnsService(env.tmp_path, env.listen, env.state_dir, env.conf,
                       extra=["--no-address-setup"])
    env.track(plain)
    monkeypatch.setenv("SMARTER_CNI_DNS_LEAN", "0")
    plain.start()
    cmdline = Path(f"/proc/{plain.pid}/cmdline").read_bytes()
    assert b"--parsed-settings" not in cmdline  # turned off: serves from the first process
    assert env.dig("pod-7.default").values() == ["10.99.0.9"]
