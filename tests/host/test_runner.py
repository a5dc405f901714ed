"""The runner carries out its lifecycle's decisions, driven here by a fake spawner: no worker
process is started, so each decision can be watched on its own (spawn, restart, quarantine,
the secret that opens one session)."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent_host.host.config import HostConfig
from agent_host.host.facilities import Facilities
from agent_host.host.fanout import Group
from agent_host.host.findings import CollectingSink, FindingPipeline
from agent_host.host.lifecycle import Phase
from agent_host.host.manifest import Manifest
from agent_host.host.restart import RestartPolicy
from agent_host.host.runner import PluginRunner
from agent_host.host.sandbox import WorkerSandbox
from agent_host.host.spawn import WorkerProcess
from agent_host.host.store import StateStore
from agent_host.host.updates.content import snapshot
from agent_host.protocol import SECRET_BYTES
from tests.helpers import make_plugin

#: Above the kernel's highest pid (4,194,304): no process or group can have it, so the runner's
#: signals to it reach nothing.
NO_SUCH_PID = 4_194_305 + 1_000
Scenario = Callable[[PluginRunner], Awaitable[None]]
FAST = RestartPolicy(
    backoff_s=0.001,
    max_backoff_s=0.001,
    jitter=0.0,
    burst=3,
    window_s=60.0,
    start_attempts=4,
    set_aside_s=0.05,
)


class _Stdin:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Process:
    """A worker that exits with ``code`` when told to."""

    def __init__(self, pid: int, code: int) -> None:
        self.pid = pid
        self.stdin = _Stdin()
        self.stdout = None
        self.stderr = None
        self.returncode: int | None = None
        self._code = code
        self.exit = asyncio.Event()

    async def wait(self) -> int:
        await self.exit.wait()
        self.returncode = self._code
        return self._code


class FakeSpawner:
    """Hands out fake processes; each exits at once (``exit_at_once``) or when the test says."""

    def __init__(self, *, code: int = 1, exit_at_once: bool = True, error: int = 0) -> None:
        self.spawned: list[_Process] = []
        self.args: list[list[str]] = []
        self._code, self._at_once, self._error = code, exit_at_once, error

    async def spawn(self, args: list[str], cwd: Path, broker_fd: int) -> WorkerProcess:
        self.args.append(args)
        if self._error:
            raise OSError(self._error, "Too many open files")
        proc = _Process(NO_SUCH_PID + len(self.spawned), self._code)
        if self._at_once:
            proc.exit.set()
        self.spawned.append(proc)
        return proc  # type: ignore[return-value]

    async def close(self) -> None:
        pass


def make_runner(tmp_path: Path, spawner: FakeSpawner) -> PluginRunner:
    """A runner of a small plugin whose workers come from ``spawner`` (call in the loop)."""
    folder = make_plugin(tmp_path / "plugins", "p", "class P(Plugin): pass")
    manifest = Manifest.load(folder / "plugin.toml")
    config = HostConfig(cgroups=False, zygote=False, state_dir=tmp_path / "state")
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    content = snapshot(manifest.directory, runtime / "content")
    facilities = Facilities(
        config,
        FindingPipeline(CollectingSink(), "h"),
        FAST,
        StateStore(config.state_dir),
        spawner,  # type: ignore[arg-type]
    )
    return PluginRunner(
        manifest,
        Group(manifest.subscribe, 8, 8),
        facilities,
        content=content,
        sandbox=WorkerSandbox(config, manifest, content, runtime, 1),
    )


def run_with(tmp_path: Path, spawner: FakeSpawner, scenario: Scenario) -> None:
    async def main() -> None:
        runner = make_runner(tmp_path, spawner)
        try:
            await scenario(runner)
        finally:
            await runner.close()
            await runner.close_sessions(0)

    asyncio.run(main())


async def until(condition: object, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.005)


class TestRunner:
    """Each lifecycle decision becomes the runner's act, and only that."""

    def test_a_worker_that_keeps_dying_is_restarted_then_quarantined(self, tmp_path: Path) -> None:
        spawner = FakeSpawner(code=3)

        async def scenario(runner: PluginRunner) -> None:
            runner.start()
            await until(lambda: runner.phase is Phase.QUARANTINED)
            assert len(spawner.spawned) == FAST.burst  # one spawn per failure, no more
            assert runner.stats.restarts == {"exit": FAST.burst - 1}
            quarantine = runner._facilities.store.quarantine_of("p", "1.0")
            assert quarantine is not None and "exit code 3" in quarantine.reason

        run_with(tmp_path, spawner, scenario)

    def test_each_spawn_has_its_own_secret_which_opens_one_session(self, tmp_path: Path) -> None:
        spawner = FakeSpawner(exit_at_once=False)

        async def scenario(runner: PluginRunner) -> None:
            runner.start()
            await until(lambda: runner.phase is Phase.STARTING)
            (proc,) = spawner.spawned
            token = proc.stdin.data
            worker_id = spawner.args[0][spawner.args[0].index("--worker-id") + 1]
            assert len(token) == SECRET_BYTES
            assert not runner.claim(worker_id, bytes(SECRET_BYTES))
            assert runner.claim(worker_id, token)
            assert not runner.claim(worker_id, token)  # used once: spent
            assert runner.pid == proc.pid
            proc.exit.set()
            await until(lambda: len(spawner.spawned) == 2)  # a new generation, a new secret
            assert spawner.spawned[1].stdin.data != token
            assert runner.pid == spawner.spawned[1].pid
            spawner.spawned[1].exit.set()

        run_with(tmp_path, spawner, scenario)

    def test_a_plugin_that_cannot_start_is_set_aside_not_quarantined(self, tmp_path: Path) -> None:
        spawner = FakeSpawner(error=errno.EMFILE)

        async def scenario(runner: PluginRunner) -> None:
            runner.start()
            await until(lambda: runner.phase is Phase.SET_ASIDE)
            assert len(spawner.args) == FAST.start_attempts
            assert "could not be started 4 times in a row" in runner.reason
            assert "Too many open files" in runner.reason
            assert runner.group.backlog.subscribers == set()  # owed nothing while set aside
            # Tried again after the set-aside period, and set aside again at once.
            await until(lambda: len(spawner.args) == FAST.start_attempts + 1)
            await until(lambda: runner.phase is Phase.SET_ASIDE)
            assert runner.worker is None
            assert runner._facilities.store.quarantine_of("p", "1.0") is None

        run_with(tmp_path, spawner, scenario)
