"""``agent-host status`` and ``agent-host tail``: a running host, asked through its control
socket (``host/control.py``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import grpc
from google.protobuf.json_format import MessageToDict

from agent_host.errors import UsageError
from agent_host.host.findings import finding_json
from agent_host.protocol import (
    ControlStub,
    ReleaseRequest,
    RestartRequest,
    StatusReply,
    StatusRequest,
    TailRequest,
)

CONTROL_SOCKET = "control.sock"
_TIMEOUT_S = 10.0


def socket_path(given: Path | None, state_dir: Path) -> Path:
    return given or state_dir / CONTROL_SOCKET


def _stub(path: Path) -> tuple[grpc.Channel, ControlStub]:
    if not path.exists():
        raise UsageError("--control-socket", f"no running host: {path} does not exist")
    channel = grpc.insecure_channel(f"unix:{path}")
    return channel, ControlStub(channel)


def _unreachable(path: Path, exc: grpc.RpcError) -> UsageError:
    detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    return UsageError("--control-socket", f"no answer on {path}: {detail}")


def ask(path: Path) -> StatusReply:
    """The running host's status; raises UsageError if no host answers on ``path``."""
    channel, stub = _stub(path)
    try:
        reply: StatusReply = stub.Status(StatusRequest(), timeout=_TIMEOUT_S)
    except grpc.RpcError as exc:
        raise _unreachable(path, exc) from None
    finally:
        channel.close()
    return reply


def status(path: Path, as_json: bool) -> int:
    reply = ask(path)
    if as_json:
        print(json.dumps(MessageToDict(reply, preserving_proto_field_name=True), indent=2))
        return 0
    h = reply.host
    print(
        f"agent-host {h.version}: up {h.uptime_s:.0f}s, {h.events_accepted} events "
        f"({h.events_per_s:,.0f}/s), backlog {h.backlog_batches} batches, "
        f"{h.findings_written} findings ({h.findings_lost} lost)"
    )
    if h.sensor_dropped:
        drops = ", ".join(f"{k} {v}" for k, v in sorted(h.sensor_dropped.items()))
        print(f"sensor drops: {drops}")
    for p in reply.plugins:
        causes = ", ".join(f"{k} {v}" for k, v in sorted(p.restarts_by_cause.items())) or "none"
        role = " (shadow)" if p.shadow else ""
        print(
            f"  {p.name} {p.version}{role}: {p.state}; processed {p.events_processed}, "
            f"dead-lettered {p.events_dead_lettered}, undelivered {p.events_undelivered}, "
            f"findings {p.findings}; restarts: {causes}"
        )
        if p.reason:
            print(f"    reason: {p.reason}")
        print(f"    sandbox: {' '.join(p.sandbox_layers) or 'none'}")
    for refused in reply.refused:
        print(f"  {refused.name}: refused: {refused.reason}")
    return 0


def tail(path: Path) -> int:
    """Print each finding as the host writes it, one JSON line each, until interrupted."""
    channel, stub = _stub(path)
    try:
        for finding in stub.Tail(TailRequest()):
            sys.stdout.buffer.write(finding_json(finding) + b"\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        return 0  # how a tail is meant to end
    except grpc.RpcError as exc:
        if isinstance(exc, grpc.Call) and exc.code() is grpc.StatusCode.CANCELLED:
            return 0
        raise _unreachable(path, exc) from None
    finally:
        channel.close()
    return 0


def release_running(path: Path, name: str) -> str | None:
    """Ask a running host to start ``name`` again now; what it said, or None if none runs."""
    if not path.exists():
        return None
    channel = grpc.insecure_channel(f"unix:{path}")
    try:
        reply = ControlStub(channel).Release(ReleaseRequest(plugin=name), timeout=_TIMEOUT_S)
    except grpc.RpcError:
        return None
    finally:
        channel.close()
    return str(reply.message)


def restart(path: Path, name: str) -> int:
    """``plugins restart``: ask the running host for a fresh worker of ``name``."""
    channel, stub = _stub(path)
    try:
        reply = stub.Restart(RestartRequest(plugin=name), timeout=_TIMEOUT_S)
    except grpc.RpcError as exc:
        raise _unreachable(path, exc) from None
    finally:
        channel.close()
    print(reply.message)
    return 0 if reply.restarted else 1
