"""The kubeconfig subset reader, on the shapes k3s, kubeadm and kubectl write."""

from __future__ import annotations

import base64

import pytest

from smarter_cni import kubeconfig

K3S_STYLE = """apiVersion: v1
clusters:
- cluster:
    server: https://127.0.0.1:6443
    certificate-authority: server-ca.crt
  name: local
contexts:
- context:
    cluster: local
    namespace: default
    user: user
  name: Default
current-context: Default
kind: Config
preferences: {}
users:
- name: user
  user:
    client-certificate: client-kubelet.crt
    client-key: client-kubelet.key
"""


def test_parse_block_style():
    doc = kubeconfig.parse(K3S_STYLE)
    assert doc["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    assert doc["contexts"][0] == {"context": {"cluster": "local", "namespace": "default",
                                              "user": "user"}, "name": "Default"}
    assert doc["preferences"] == {}


def test_load_resolves_relative_files(tmp_path):
    path = tmp_path / "kubelet.kubeconfig"
    path.write_text(K3S_STYLE)
    creds = kubeconfig.load(str(path))
    assert creds.server == "https://127.0.0.1:6443"
    assert creds.ca_file == str(tmp_path / "server-ca.crt")
    assert creds.cert_file == str(tmp_path / "client-kubelet.crt")


def test_embedded_data_and_token(tmp_path):
    ca = base64.b64encode(b"PEM").decode()
    text = f"""apiVersion: v1
kind: Config
current-context: "admin@edge"
clusters:
  - name: edge
    cluster:
      certificate-authority-data: {ca}
      server: "https://10.0.0.1:6443"
contexts:
  - name: "admin@edge"
    context: {{cluster: edge, user: admin}}
users:
  - name: admin
    user:
      token: 'abc''def'
"""
    path = tmp_path / "config"
    path.write_text(text)
    with pytest.raises(kubeconfig.KubeconfigError):
        kubeconfig.load(str(path))  # flow mappings beyond {} are outside the subset
    path.write_text(text.replace("context: {cluster: edge, user: admin}",
                                 "context:\n      cluster: edge\n      user: admin"))
    creds = kubeconfig.load(str(path))
    assert creds.ca_data == b"PEM" and creds.token == "abc'def"
    assert creds.server == "https://10.0.0.1:6443"


def test_plain_http_is_refused(tmp_path):
    path = tmp_path / "config"
    path.write_text(K3S_STYLE.replace("https://", "http://"))
    with pytest.raises(kubeconfig.KubeconfigError, match="https"):
        kubeconfig.load(str(path))
