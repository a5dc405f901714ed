"""The worker process: everything that runs beside plugin code, and nothing the host runs.

``boot`` is the entry point (secret, confinement, connection), ``sandbox`` what a worker does to
confine itself, ``runtime`` the session that loads one plugin and feeds it events, and ``zygote``
the pre-initialised process that forks workers. The host never imports this package: a test
checks it.
"""
