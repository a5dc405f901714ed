"""The wire protocol: generated messages from ``protos/`` plus the few helpers built on them.

Everything that crosses a process boundary is one of these messages. The generated code lives in
``agent_host.protocol.v1`` (do not edit); this module re-exports the message types under short
names and adds framing and the JSON Lines mapping used by recordings and findings files.
"""

from __future__ import annotations

from typing import Final, Literal, TypeVar

from google.protobuf import json_format

from agent_host.protocol.v1.control_pb2 import (
    HostStatus,
    PluginStatus,
    RefusedPlugin,
    ReleaseReply,
    ReleaseRequest,
    RestartReply,
    RestartRequest,
    StatusReply,
    StatusRequest,
    TailRequest,
)
from agent_host.protocol.v1.control_pb2_grpc import (
    ControlServicer,
    ControlStub,
    add_ControlServicer_to_server,
)
from agent_host.protocol.v1.event_pb2 import (
    Event,
    EventBatch,
    FileEvent,
    NetworkEvent,
    ProcessEvent,
)
from agent_host.protocol.v1.finding_pb2 import Finding
from agent_host.protocol.v1.sandbox_pb2 import SandboxLayer, SandboxPolicy, SandboxReport
from agent_host.protocol.v1.session_pb2 import (
    BatchResult,
    Heartbeat,
    Hello,
    HostMessage,
    LoadFailed,
    LogRecord,
    Ready,
    Start,
    Stop,
    Stopped,
    WorkerExit,
    WorkerMessage,
)
from agent_host.protocol.v1.session_pb2_grpc import (
    WorkerSessionServicer,
    WorkerSessionStub,
    add_WorkerSessionServicer_to_server,
)

__all__ = [
    "BROKER_MAX_PATH_BYTES",
    "EVENT_KINDS",
    "MAX_MESSAGE_BYTES",
    "SANDBOX_LAYERS",
    "SECRET_BYTES",
    "ZYGOTE_MAX_MESSAGE_BYTES",
    "BatchResult",
    "ControlServicer",
    "ControlStub",
    "Event",
    "EventBatch",
    "EventKind",
    "FileEvent",
    "Finding",
    "Heartbeat",
    "Hello",
    "HostMessage",
    "HostStatus",
    "LoadFailed",
    "LogRecord",
    "NetworkEvent",
    "PluginStatus",
    "ProcessEvent",
    "Ready",
    "RefusedPlugin",
    "ReleaseReply",
    "ReleaseRequest",
    "RestartReply",
    "RestartRequest",
    "SandboxLayer",
    "SandboxPolicy",
    "SandboxReport",
    "Start",
    "StatusReply",
    "StatusRequest",
    "Stop",
    "Stopped",
    "TailRequest",
    "WorkerExit",
    "WorkerMessage",
    "WorkerSessionServicer",
    "WorkerSessionStub",
    "add_ControlServicer_to_server",
    "add_WorkerSessionServicer_to_server",
    "batch_frame",
    "batch_payload",
    "event_kind",
    "event_record",
    "message_from_json",
    "message_to_json",
    "varint",
]

EventKind = Literal["process", "file", "network"]
EVENT_KINDS: Final[tuple[EventKind, ...]] = ("process", "file", "network")

# Field number of HostMessage.batch, and its wire tag: (field << 3) | LEN.
_HOST_MESSAGE_BATCH_TAG: Final = bytes([(HostMessage.BATCH_FIELD_NUMBER << 3) | 2])

_EVENT_BATCH_ID_TAG: Final = bytes([EventBatch.BATCH_ID_FIELD_NUMBER << 3])
_EVENT_BATCH_EVENTS_TAG: Final = bytes([(EventBatch.EVENTS_FIELD_NUMBER << 3) | 2])

# Every message on a session is bounded; a worker that sends more is cut off by gRPC itself.
MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
#: The size of a spawn's session secret (``Hello.token``), written to the worker's stdin.
SECRET_BYTES: Final = 32
#: Every layer of a worker's sandbox, in the order a worker applies them (see sandbox.proto).
SANDBOX_LAYERS: Final = (
    "cgroup",
    "cpu",
    "session",
    "pid_namespace",
    "network_namespace",
    "mount_namespace",
    "ipc_namespace",
    "uts_namespace",
    "identity",
    "capabilities",
    "no_new_privs",
    "rlimits",
    "landlock",
    "seccomp",
)
#: The longest path a worker may ask the host's file broker to open (see host/broker.py).
BROKER_MAX_PATH_BYTES: Final = 4096
#: The largest message between the host and the zygote (one SOCK_SEQPACKET packet).
ZYGOTE_MAX_MESSAGE_BYTES: Final = 65536


def event_kind(event: Event) -> EventKind | None:
    """The kind of ``event`` ("process", "file" or "network"), or None if it has none."""
    return event.WhichOneof("kind")


def varint(value: int) -> bytes:
    """``value`` as a protobuf base-128 varint (lengths in frames and recordings)."""
    if value < 0x80:  # the common cases first: most events are under 16 KiB
        return bytes((value,))
    if value < 0x4000:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def batch_frame(serialized_batch: bytes) -> bytes:
    """A serialized ``HostMessage`` whose ``batch`` field holds an already serialized EventBatch.

    In the protobuf wire format an embedded message is encoded exactly like a length-delimited
    bytes field, so the host serializes each batch once and wraps the same bytes for every worker
    with a two-to-six byte prefix instead of re-encoding every event per worker.
    """
    return _HOST_MESSAGE_BATCH_TAG + varint(len(serialized_batch)) + serialized_batch


def event_record(serialized_event: bytes) -> bytes:
    """``serialized_event`` encoded as one element of ``EventBatch.events``."""
    return _EVENT_BATCH_EVENTS_TAG + varint(len(serialized_event)) + serialized_event


def batch_payload(batch_id: int, records: list[bytes]) -> bytes:
    """A serialized EventBatch made of records from :func:`event_record`."""
    return b"".join([_EVENT_BATCH_ID_TAG, varint(batch_id), *records])


def message_to_json(message: Event | Finding) -> str:
    """One line of JSON in the protobuf JSON mapping, with the proto field names."""
    return json_format.MessageToJson(
        message, preserving_proto_field_name=True, indent=None, sort_keys=False
    )


_M = TypeVar("_M", Event, Finding)


def message_from_json(text: str, message: _M) -> _M:
    """Parse ``text`` into ``message`` (protobuf JSON mapping); raises json_format.ParseError."""
    return json_format.Parse(text, message)
