"""Fixtures for the integration tests (see :mod:`integration.harness`).

Session scope: ``containerd`` (an isolated daemon with the test image imported into the
``pyrunc-it`` namespace) and ``image`` (the image ref). Test scope: ``runtime`` (parametrized:
``runc`` = ``io.containerd.runc.v2``, the control, and ``pyrunc`` = ``io.containerd.pyrunc.v2``),
``ctr`` (bound to the daemon and namespace), ``containers`` (runs containers with
``runtime`` and removes all of them afterwards, even when the test failed) and ``scratch`` (a
fresh directory on disk for images, work dirs and other output; removed afterwards).

Everything here needs root; without it every test in this directory is skipped. When a test
fails, the report gets the part of the containerd log written during that test.
``--runtime runc`` (or ``pyrunc``) keeps only that runtime's tests (``-k runc`` would also
match ``pyrunc``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from .harness import (
    IMAGE_REF,
    NAMESPACE,
    RUNTIMES,
    Containerd,
    Containers,
    Ctr,
    ensure_image_tar,
)

_DAEMON = pytest.StashKey[Containerd]()
_LOG_OFFSET = pytest.StashKey[int]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--runtime",
        action="append",
        choices=sorted(RUNTIMES),
        default=None,
        help="run integration tests only with this runtime (repeatable; default: all)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    mine = [item for item in items if str(item.path).startswith(here + os.sep)]
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="integration tests need root (they start containerd)")
        for item in mine:
            item.add_marker(skip)
        return
    names = config.getoption("--runtime")
    if names:
        wanted = {RUNTIMES[name] for name in names}
        keep: list[pytest.Item] = []
        drop: list[pytest.Item] = []
        for item in items:
            callspec = getattr(item, "callspec", None)
            rt = callspec.params.get("runtime") if callspec is not None else None
            (drop if item in mine and rt is not None and rt not in wanted else keep).append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    daemon = item.config.stash.get(_DAEMON, None)
    if report.failed and daemon is not None:
        since = item.stash.get(_LOG_OFFSET, 0)
        report.sections.append(
            (f"containerd log ({daemon.log_path}, this test)", daemon.log_tail(80, since=since))
        )
    return report


@pytest.fixture(scope="session")
def containerd(request: pytest.FixtureRequest) -> Iterator[Containerd]:
    """The session's isolated containerd, with the test image imported into ``pyrunc-it``."""
    tarball = ensure_image_tar()
    daemon = Containerd.start()
    request.config.stash[_DAEMON] = daemon
    try:
        daemon.import_image(tarball, IMAGE_REF, NAMESPACE)
        yield daemon
    finally:
        problems = daemon.stop()
        del request.config.stash[_DAEMON]
        if problems:
            print("\nintegration harness teardown:", *problems, sep="\n  ")


@pytest.fixture(scope="session")
def image(containerd: Containerd) -> str:
    """The test image ref (``localhost/pyrunc-test:latest``), imported in ``pyrunc-it``."""
    return IMAGE_REF


@pytest.fixture(autouse=True)
def _mark_log_offset(request: pytest.FixtureRequest) -> None:
    daemon = request.config.stash.get(_DAEMON, None)
    if daemon is not None:
        request.node.stash[_LOG_OFFSET] = daemon.log_size()


@pytest.fixture(params=list(RUNTIMES.values()), ids=list(RUNTIMES))
def runtime(request: pytest.FixtureRequest) -> str:
    """The runtime type under test: ``io.containerd.runc.v2`` or ``io.containerd.pyrunc.v2``."""
    value: str = request.param
    return value


@pytest.fixture
def ctr(containerd: Containerd, image: str) -> Ctr:
    """``ctr`` bound to the session's containerd and the ``pyrunc-it`` namespace."""
    return containerd.ctr(NAMESPACE)


@pytest.fixture
def containers(
    containerd: Containerd, ctr: Ctr, image: str, runtime: str, request: pytest.FixtureRequest
) -> Iterator[Containers]:
    """Runs containers with ``runtime``; removes every one of them when the test ends."""
    logdir = containerd.dir / "logs" / request.node.name.replace("/", "_")[:80]
    box = Containers(containerd=containerd, ctr=ctr, runtime=runtime, image=image, logdir=logdir)
    try:
        yield box
    finally:
        problems = box.cleanup()
        if problems:
            print("\ncontainer cleanup:", *problems, sep="\n  ")


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A fresh empty directory on disk (not tmpfs: CRIU images can be large) for images, work
    dirs and a test's other output; removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="pyrunc-it-", dir="/var/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
