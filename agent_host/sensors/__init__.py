"""Event sources: recordings, a synthetic generator, and (on Linux) live sensors.

A source is an async iterable of ``Event``. Sources never assign ``seq``: the host does.
"""
