"""In-cluster credentials (incluster.py) and the `dns` options that choose them: no API
server needed (the watch against a real HTTPS stand-in is in
tests/integration/test_dns_incluster.py)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from smarter_cni import incluster, kubeapi
from smarter_cni.dns import metrics
from smarter_cni.dns.kubewatch import explain
from smarter_cni.dns.service import SettingsError, build_parser, service_credentials

PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def sa_dir(tmp_path: Path, token: str | None = "tok", ca: bytes | None = PEM) -> Path:
    path = tmp_path / "sa"
    path.mkdir()
    if token is not None:
        (path / "token").write_text(token)
    if ca is not None:
        (path / "ca.crt").write_bytes(ca)
    (path / "namespace").write_text("kube-system\n")
    return path


# ---------------------------------------------------------------- the address

@pytest.mark.parametrize("host, want", [
    ("10.43.0.1", "10.43.0.1"), ("fd00:43::1", "[fd00:43::1]"), ("[fd00::1]", "[fd00::1]"),
    ("api.example", "api.example"), (" ::1 ", "[::1]"),
])
def test_bracket(host, want):
    assert incluster.bracket(host) == want


@pytest.mark.parametrize("env, want", [
    ({"KUBERNETES_SERVICE_HOST": "10.43.0.1", "KUBERNETES_SERVICE_PORT": "443"},
     "https://10.43.0.1:443"),
    ({"KUBERNETES_SERVICE_HOST": "fd00:43::1", "KUBERNETES_SERVICE_PORT": "443"},
     "https://[fd00:43::1]:443"),
    ({"KUBERNETES_SERVICE_HOST": "10.43.0.1"}, "https://10.43.0.1:443"),
])
def test_the_service_address_from_the_environment(env, want):
    assert incluster.server_url("", env) == want


def test_api_server_wins_over_the_environment():
    env = {"KUBERNETES_SERVICE_HOST": "10.43.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert incluster.server_url("https://127.0.0.1:6443/", env) == "https://127.0.0.1:6443"
    assert incluster.server_url("https://[fd00::1]:6443", env) == "https://[fd00::1]:6443"


@pytest.mark.parametrize("api_server, env, message", [
    ("", {}, "KUBERNETES_SERVICE_HOST is not set"),
    ("", {"KUBERNETES_SERVICE_HOST": "10.43.0.1", "KUBERNETES_SERVICE_PORT": "https"},
     "is not a port"),
    ("", {"KUBERNETES_SERVICE_HOST": "10.43.0.1", "KUBERNETES_SERVICE_PORT": "70000"},
     "is not a port"),
    ("http://127.0.0.1:6443", {}, "must be https://"),
    ("127.0.0.1:6443", {}, "must be https://"),
    ("https://fd00::1:6443", {}, "brackets"),
    ("https://127.0.0.1:99999", {}, "is not a URL"),
])
def test_bad_addresses_are_clear_errors(api_server, env, message):
    with pytest.raises(incluster.InClusterError, match=message):
        incluster.server_url(api_server, env)


# ---------------------------------------------------------------- the files

def test_load_reads_the_files_each_time(tmp_path):
    path = sa_dir(tmp_path, "first\n")
    creds = incluster.load(str(path), "https://127.0.0.1:6443")
    assert (creds.server, creds.token, creds.ca_data) == ("https://127.0.0.1:6443", "first", PEM)
    assert (creds.source, creds.token_file) == ("in-cluster", str(path / "token"))
    assert kubeapi.headers(creds)["Authorization"] == "Bearer first"
    (path / "token").write_text("second")        # kubelet rotated it
    assert incluster.load(str(path), "https://127.0.0.1:6443").token == "second"
    assert incluster.namespace(str(path)) == "kube-system"


@pytest.mark.parametrize("token, ca, message", [
    (None, PEM, "no service account token at .*automountServiceAccountToken: true"),
    ("  \n", PEM, "is empty"),
    ("tok", None, "cannot read the cluster CA .*ca.crt"),
    ("tok", b"garbage", "holds no PEM certificate"),
])
def test_missing_or_broken_files_are_clear_errors(tmp_path, token, ca, message):
    path = sa_dir(tmp_path, token, ca)
    with pytest.raises(incluster.InClusterError, match=message):
        incluster.load(str(path), "https://127.0.0.1:6443")


# ---------------------------------------------------------------- the options

def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_options_choose_the_credential_source(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert service_credentials(parse()) == ("", "")
    assert service_credentials(parse("--kubeconfig", "/k.yaml")) == ("/k.yaml", "kubeconfig")
    args = parse("--in-cluster", "--api-server", "https://127.0.0.1:6443",
                 "--service-account-dir", str(sa_dir(tmp_path)))
    loader, source = service_credentials(args)
    assert source == "in-cluster" and loader.server == "https://127.0.0.1:6443"
    assert loader().server == "https://127.0.0.1:6443"
    assert parse("--in-cluster").service_account_dir == incluster.SERVICE_ACCOUNT_DIR


def test_the_environment_address_is_used_without_api_server(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00:43::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    loader, _ = service_credentials(parse("--in-cluster", "--service-account-dir",
                                          str(sa_dir(tmp_path))))
    assert loader().server == "https://[fd00:43::1]:443"


@pytest.mark.parametrize("argv, message", [
    (["--in-cluster", "--kubeconfig", "/k.yaml"], "give one"),
    (["--api-server", "https://127.0.0.1:6443"], "goes with --in-cluster"),
    (["--in-cluster"], "KUBERNETES_SERVICE_HOST is not set"),
])
def test_option_conflicts_are_settings_errors(argv, message, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(SettingsError, match=message):
        service_credentials(parse(*argv))


# ---------------------------------------------------------------- what an operator reads

def _creds(tmp_path: Path):
    return incluster.load(str(sa_dir(tmp_path)), "https://127.0.0.1:6443")


def test_errors_name_the_fix(tmp_path):
    creds = _creds(tmp_path)
    refused = explain(kubeapi.APIError("GET /api/v1/services: HTTP 401 Unauthorized", 401),
                      creds, "in-cluster")
    assert f"token from {creds.token_file}" in refused and "read again" in refused
    forbidden = explain(kubeapi.APIError("GET /api/v1/services: HTTP 403 x", 403), creds,
                        "in-cluster")
    assert "get, list and watch on services" in forbidden and "ClusterRole" in forbidden
    assert "endpointslices (apiGroup discovery.k8s.io)" in forbidden
    bad_ca = explain(ssl.SSLCertVerificationError(1, "certificate verify failed"), creds,
                     "in-cluster")
    assert "the service account's ca.crt does not verify" in bad_ca
    assert "https://127.0.0.1:6443" in bad_ca
    broken = explain(ssl.SSLError(9, "[X509] no certificate or crl found"), creds, "in-cluster")
    assert "TLS with https://127.0.0.1:6443 failed" in broken and "ca.crt" in broken
    assert "kubeconfig's user" in explain(kubeapi.APIError("HTTP 403", 403), creds,
                                          "kubeconfig")
    assert explain(OSError("refused"), creds, "in-cluster") == "OSError: refused"


def test_status_reads_the_credentials_and_problems_from_the_kube_metrics():
    """The real /metrics text of two watches (rendered by metrics.watch_samples) read back
    as `smarter-cni status` does: one `kube watch` line naming the credentials and server,
    and a 403 as a problem whose fix is the RBAC."""
    from smarter_cni.node.status import Report, watch_problems

    class Table:
        count = 7

    class Watch:
        def __init__(self, resource: str, failing: bool, status: int) -> None:
            self.resource, self.failing, self.last_status = resource, failing, status
            self.up = not failing
            self.table = Table()
            self.source, self.server = "in-cluster", "https://[fd00::1]:6443"
            self.counts = {"list": 1, "watch": 2, "events": 3, "bookmarks": 0, "gone": 0,
                           "errors": 4 * failing, "token_reloads": 1}

    metrics.WATCHES[:] = [Watch("services", False, 0), Watch("endpointslices", True, 403)]
    try:
        text = metrics.Text()
        metrics.watch_samples(text)
        parsed = metrics.parse_text(text.render().decode())
    finally:
        metrics.WATCHES.clear()
    assert parsed["smarter_cni_dns_kube_watch_info"] == [
        ({"resource": r, "credentials": "in-cluster", "server": "https://[fd00::1]:6443"}, 1.0)
        for r in ("services", "endpointslices")]
    counters, info = metrics.counters_of(parsed), metrics.watch_info(parsed)
    assert counters["watch_endpointslices_status"] == 403
    assert counters["watch_services_status"] == 0, "0 while up"
    assert counters["watch_services_token_reloads"] == 1
    line = metrics.watch_summary(counters, info)
    assert line == ("services up (7 objects, 0 relists, 0 errors); endpointslices DOWN "
                    "(HTTP 403) (7 objects, 0 relists, 4 errors); with in-cluster credentials, "
                    "API server https://[fd00::1]:6443"), line
    report = Report()
    watch_problems(report, counters, {"dns_service": "systemd"}, info)
    (problem,) = report.problems
    assert "not watching endpointslices on the API server https://[fd00::1]:6443: HTTP 403" \
        in problem["problem"]
    assert problem["fix"].startswith(incluster.RBAC_HINT), problem
    counters["watch_endpointslices_status"] = 401
    report = Report()
    watch_problems(report, counters, {}, info)
    assert "the service account token is refused" in report.problems[0]["problem"]
    assert "automountServiceAccountToken" in report.problems[0]["fix"]
    report = Report()   # a kubeconfig's 403: its user's RBAC
    watch_problems(report, dict(counters, watch_endpointslices_status=403), {},
                   {r: {"credentials": "kubeconfig", "server": "https://x:6443"} for r in info})
    assert "kubeconfig's user needs get, list and watch" in report.problems[0]["fix"]


def test_rbac_hint_names_both_resources():
    hint = incluster.RBAC_HINT
    assert "services" in hint and "endpointslices" in hint and "discovery.k8s.io" in hint
