"""agent-host: a user-mode security agent; each detection plugin runs in its own sandboxed worker.

The host (``agent_host.host``) gathers events from its ``sources`` and fans them out over gRPC on a
Unix socket to worker processes (``agent_host.worker``), each of which imports one plugin written
against ``agent_host.sdk``. A plugin that crashes or misbehaves takes down its own worker only.
The command line is ``agent_host.cli``; the wire protocol, ``agent_host.protocol``.
"""

__version__ = "0.1.0"
