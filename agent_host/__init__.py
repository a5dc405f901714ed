"""agent-host: a user-mode security agent; each detection plugin runs in its own sandboxed worker.

The host (``supervisor``) gathers events and fans them out over gRPC on a Unix socket to worker
processes (``worker``), each of which imports one plugin. A plugin that crashes or misbehaves takes
down its own worker only.
"""

__version__ = "0.1.0"
