"""A small CRI v1 client (what kubelet speaks to containerd) over gRPC.

The messages come from the hand-written subset in cri_v1.proto: protoc (from
grpcio-tools) compiles it to a descriptor set in a temp dir, and protobuf
builds the message classes from that at run time, so no generated code is
kept in the repository and the classes always match the installed protobuf.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

PROTO = Path(__file__).resolve().parent / "cri_v1.proto"
PACKAGE = "runtime.v1"


def load_messages() -> dict[str, type]:
    """Message name -> class, for every message in cri_v1.proto."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory(prefix="cri-proto-") as tmp:
        out = Path(tmp) / "cri_v1.pb"
        code = protoc.main(["protoc", f"-I{PROTO.parent}", f"--descriptor_set_out={out}",
                            str(PROTO)])
        if code != 0:
            raise RuntimeError(f"protoc failed on {PROTO} (exit {code})")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for proto in files.file:
        pool.Add(proto)
    file = pool.FindFileByName(PROTO.name)
    return {name: message_factory.GetMessageClass(desc)
            for name, desc in file.message_types_by_name.items()}


class CRIError(RuntimeError):
    """A CRI call failed: the gRPC status code and containerd's message."""

    def __init__(self, method: str, code: str, details: str) -> None:
        super().__init__(f"{method}: {code}: {details}")
        self.method = method
        self.code = code
        self.details = details


class CRIClient:
    """Unary CRI calls on a unix socket: `client.call("RunPodSandbox", config=...)`.

    Keyword arguments become the request message's fields (nested messages
    as dicts, as protobuf's constructors accept them).
    """

    IMAGE_METHODS = frozenset({"ImageStatus"})

    def __init__(self, socket_path: str, timeout: float = 60.0) -> None:
        import grpc

        self._grpc = grpc
        self.messages = load_messages()
        self.timeout = timeout
        self.channel = grpc.insecure_channel(f"unix://{socket_path}")
        self._stubs: dict[str, Any] = {}

    def message(self, name: str, **fields: Any) -> Any:
        return self.messages[name](**fields)

    def _stub(self, method: str) -> Any:
        if method not in self._stubs:
            service = "ImageService" if method in self.IMAGE_METHODS else "RuntimeService"
            response = self.messages[f"{method}Response"]
            self._stubs[method] = self.channel.unary_unary(
                f"/{PACKAGE}.{service}/{method}",
                request_serializer=lambda message: message.SerializeToString(),
                response_deserializer=response.FromString)
        return self._stubs[method]

    def call(self, method: str, timeout: float | None = None, **fields: Any) -> Any:
        request = self.messages[f"{method}Request"](**fields)
        try:
            return self._stub(method)(request, timeout=timeout or self.timeout)
        except self._grpc.RpcError as err:
            raise CRIError(method, err.code().name, err.details() or "") from None

    def ready(self, timeout: float = 2.0) -> bool:
        """Whether the runtime answers and reports RuntimeReady and NetworkReady."""
        try:
            status = self.call("Status", timeout=timeout).status
        except CRIError:
            return False
        conditions = {c.type: c.status for c in status.conditions}
        return bool(conditions.get("RuntimeReady") and conditions.get("NetworkReady"))

    def close(self) -> None:
        self.channel.close()
