"""CNI errors: every failure the plugin reports is a CNIError with its spec code."""

from __future__ import annotations

# Codes from the CNI specification (1.1.0, "Error").
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_NETWORK_CONFIG = 7
TRY_AGAIN_LATER = 11
PLUGIN_NOT_AVAILABLE = 50
LIMITED_CONNECTIVITY = 51

# Plugin-specific codes (100 and above).
ADDRESS_EXHAUSTED = 100
INTERFACE_EXISTS = 101
DATAPLANE_FAILURE = 102
CHECK_FAILED = 103
IPAM_PLUGIN_FAILURE = 104
DOCKER_FAILURE = 105
# The Docker network would give the node DNS address to a pod (docker mode);
# `smarter-cni install --mode docker` migrates it.
DOCKER_NETWORK_UNSAFE = 106


class CNIError(Exception):
    """A failure with a CNI error code, a one-line message and optional details."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str) -> dict:
        out = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out
