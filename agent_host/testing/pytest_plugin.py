"""The pytest fixture for plugin authors (loaded by pytest through the ``pytest11`` entry point).

Kept apart from ``agent_host.testing`` so that agent-host does not need pytest to run.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agent_host.testing import PluginRun, run_plugin


@pytest.fixture
def agent_host_plugin() -> Callable[..., PluginRun]:
    """``agent_host.testing.run_plugin``: run a plugin in a real worker over events."""
    return run_plugin
