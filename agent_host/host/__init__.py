"""The host process: the supervisor and everything it uses to keep plugins in their place.

A reader's map, by the life of an event:

- ``supervisor``: the host process itself; numbers events, owns the plugins, drains and stops.
- ``fanout``: batching per subscription group, and the bounded backlog workers read from.
- ``runner``: one plugin's task, which carries out what its ``lifecycle`` decides.
- ``conversation``: the gRPC session with the plugin's current worker (Start, batches, Stop).
- ``child``: that worker's process (secret, limits, its cgroup from ``cgroups``), and its end.
- ``lifecycle``: the phases of a worker and the transition table, with no I/O at all.
- ``delivery``: what one plugin has been sent and not yet processed (cursor, window, in flight).
- ``poison``: bisection of a batch that keeps failing a plugin, and the poison budget.
- ``limits``: deadlines and resource limits, measured from outside the worker.
- ``restart``: backoff, the crash-loop breaker, and quarantine periods.
- ``findings``: the one pipeline a finding goes through: cap, check, stamp, id, dedup, sink.
- ``session``: the gRPC server that authenticates workers; ``spawn``: starting their processes.
- ``store``: quarantines and dead letters, kept across runs; ``manifest``, ``config``: input.

The host never imports plugin code or the worker runtime (``agent_host.worker``); a test checks.
"""
