"""Where findings go besides the findings file: outputs that must not lose them.

Each output is a :class:`~agent_host.host.exports.sender.SpooledOutput`: the finding pipeline
appends to its spool on disk at once (detection never waits for a receiver), and a task of its
own sends from the spool and moves past what the receiver took. One transport each: NATS
JetStream (``nats``), an HTTP webhook (``webhook``), syslog or journald (``syslog``), a program's
standard input (``program``).
"""
