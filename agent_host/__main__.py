"""``python -m agent_host`` is the ``agent-host`` command."""

import sys

from agent_host.entry import main

sys.exit(main())
