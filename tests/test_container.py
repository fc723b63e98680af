"""shim.container with a fake runtime and the real reaper: the lifecycle, its events in order,
the created-from-checkpoint state entered through the table, config.json written once per
Create, and a failed Create undone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from fake_runtime import FakeRuntime
from google.protobuf.message import Message

import shim.bundle
import shim.checkpoint.netrestore
from shim.bundle import CRIU_CONFIG, CRIU_CONFIG_ANNOTATION, Spec
from shim.checkpoint import runner
from shim.checkpoint.criu import Requirements
from shim.checkpoint.plan import CheckpointPlan, RestoreSource
from shim.container import Container, ContainerConfig
from shim.errors import FailedPrecondition, ShimError
from shim.reaper import Reaper
from shim.runtime import Runtime
from shim.state import CreatedFromCheckpoint, Deleted, Paused, Running, Stopped
from shim.stdio import IOConfig

Scenario = Callable[[Container, FakeRuntime, list[tuple[str, Message]]], Awaitable[None]]


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    path = tmp_path / "bundle"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"ociVersion": "1.0.2", "annotations": {}}))
    return path


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Spec]]:
    """Every config.json write, wherever it comes from."""
    written: list[Spec] = []
    real = shim.bundle.write_spec

    def spy(bundle: Path, spec: Spec) -> None:
        written.append(spec)
        real(bundle, spec)

    monkeypatch.setattr(shim.bundle, "write_spec", spy)
    monkeypatch.setattr(shim.checkpoint.netrestore, "write_spec", spy)
    yield written


@pytest.fixture(autouse=True)
def _no_criu(monkeypatch: pytest.MonkeyPatch) -> None:
    async def capable(runtime: Runtime, reaper: Reaper, req: Requirements) -> int:
        return 30000  # CRIU 3.0's version number

    monkeypatch.setattr(runner, "_ensure_capable", capable)


def scenario(
    bundle: Path, body: Scenario, *, restore: RestoreSource | None = None,
    rt: FakeRuntime | None = None,
) -> list[tuple[str, Message]]:  # fmt: skip
    """Create the container (from ``restore`` if given) on a loop with the reaper installed,
    run ``body``; return the published events."""
    events: list[tuple[str, Message]] = []
    runtime = rt or FakeRuntime()

    async def main() -> None:
        reaper = Reaper()
        reaper.install(asyncio.get_running_loop())
        config = ContainerConfig("c1", bundle, "ns", IOConfig(), restore=restore)
        c = await Container.create(config, runtime, reaper, lambda t, e: events.append((t, e)))
        try:
            await body(c, runtime, events)
        finally:
            for pid in runtime.pids.values():  # whatever the scenario left running
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    asyncio.run(main())
    return events


def topics(events: list[tuple[str, Message]]) -> list[str]:
    return [t for t, _ in events]


def test_lifecycle_publishes_in_order(bundle: Path, tmp_path: Path, writes: list[Spec]) -> None:
    async def body(c: Container, rt: FakeRuntime, events: list[tuple[str, Message]]) -> None:
        assert len(writes) == 1  # the CRIU config annotation, written once at Create
        await c.start("")
        assert isinstance(c.init.state, Running) and c.init.pid == rt.pids["c1"]
        await c.pause()
        assert isinstance(c.init.state, Paused)
        await c.resume()
        plan = CheckpointPlan(str(tmp_path / "img"), str(tmp_path / "work"))
        await c.checkpoint(plan)
        assert isinstance(c.init.state, Running)  # leave-running
        await c.kill("", signal.SIGKILL, all=False)
        async with asyncio.timeout(10):
            await c.wait("")
        assert isinstance(c.init.state, Stopped) and c.init.exit_status == 128 + 9
        await c.delete("")
        assert isinstance(c.init.state, Deleted)

    events = scenario(bundle, body)
    assert topics(events) == [
        "/tasks/create", "/tasks/start", "/tasks/paused", "/tasks/resumed",
        "/tasks/checkpointed", "/tasks/exit", "/tasks/delete",
    ]  # fmt: skip
    spec = json.loads((bundle / "config.json").read_text())
    assert spec["annotations"] == {CRIU_CONFIG_ANNOTATION: str(bundle / CRIU_CONFIG)}


def test_created_from_checkpoint_enters_through_the_table_and_restores_at_start(
    bundle: Path, tmp_path: Path, writes: list[Spec]
) -> None:
    images = tmp_path / "img"
    images.mkdir()
    source = RestoreSource(str(images))

    async def body(c: Container, rt: FakeRuntime, events: list[tuple[str, Message]]) -> None:
        state = c.init.state
        assert isinstance(state, CreatedFromCheckpoint) and state.source == source
        assert len(writes) == 1  # annotation and (no) hook: config.json written once
        assert rt.calls == []  # nothing runs until Start
        with pytest.raises(FailedPrecondition, match="cannot pause"):
            await c.pause()
        await c.start("")
        assert isinstance(c.init.state, Running) and c.init.pid == rt.pids["c1"]
        assert rt.calls[0][:3] == ["restore", "--image-path", str(images)]
        await c.kill("", signal.SIGKILL, all=False)
        async with asyncio.timeout(10):
            await c.wait("")
        await c.delete("")

    events = scenario(bundle, body, restore=source)
    assert topics(events) == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]
    created = events[0][1]
    assert getattr(created, "checkpoint") == str(images)  # noqa: B009


def test_a_failed_restore_keeps_the_state_and_a_delete_ends_it(
    bundle: Path, tmp_path: Path
) -> None:
    rt = FakeRuntime()
    rt.fail["restore"] = ShimError("runc restore failed")
    source = RestoreSource(str(tmp_path / "img"))

    async def body(c: Container, rt: FakeRuntime, events: list[tuple[str, Message]]) -> None:
        state = c.init.state
        with pytest.raises(ShimError, match="restore failed: runc restore failed"):
            await c.start("")
        assert c.init.state is state  # still created from the checkpoint: Start may retry
        await c.delete("")
        assert isinstance(c.init.state, Deleted)
        assert rt.calls[-1] == ["delete", "--force", "c1"]

    events = scenario(bundle, body, restore=source, rt=rt)
    assert topics(events) == ["/tasks/create", "/tasks/delete"]


def test_a_failed_create_is_undone(bundle: Path) -> None:
    rt = FakeRuntime()
    rt.fail["create"] = ShimError("runc create failed: no such image")
    events: list[tuple[str, Message]] = []

    async def main() -> None:
        reaper = Reaper()
        config = ContainerConfig("c1", bundle, "ns", IOConfig())
        with pytest.raises(ShimError, match="no such image"):
            await Container.create(config, rt, reaper, lambda t, e: events.append((t, e)))

    asyncio.run(main())
    assert events == []
    assert rt.calls[-1] == ["delete", "--force", "c1"]
