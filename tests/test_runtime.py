"""shim.runtime: golden argv of every runtime command, error classification and log reading.

The runtime is a fake binary (a shell script in tmp_path) run through a real Reaper: it
records its argv and stdin, appends a prepared line to the ``--log`` file, prints prepared
stdout/stderr, writes to fd 3 if one was passed, and exits with a prepared status.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import pytest

from shim.errors import FailedPrecondition, NotFound, ShimError
from shim.reaper import Reaper
from shim.runtime import (
    CreateOpts,
    RestoreOpts,
    Runc,
    RuntimeConfig,
    Stdio,
    classify_error,
    last_log_error,
)
from shim.runtime._runc import DEFAULT_ROOT
from shim.spawn import Result, read_all

FAKE_RUNTIME = """#!/bin/sh
d=$(dirname "$0")
: > "$d/argv"
for a in "$@"; do printf '%s\\n' "$a" >> "$d/argv"; done
cat > "$d/stdin"
log= prev=
for a in "$@"; do [ "$prev" = --log ] && log=$a; prev=$a; done
if [ -f "$d/logline" ] && [ -n "$log" ]; then cat "$d/logline" >> "$log"; fi
{ printf fd3 >&3; } 2>/dev/null
[ -f "$d/out" ] && cat "$d/out"
[ -f "$d/err" ] && cat "$d/err" >&2
exit "$(cat "$d/status" 2>/dev/null || echo 0)"
"""


class Fake:
    """The fake runtime's directory: what it should do and what it saw."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "bin"
        self.dir.mkdir()
        self.binary = self.dir / "runc"
        self.binary.write_text(FAKE_RUNTIME)
        self.binary.chmod(0o755)
        self.bundle = root / "bundle"
        self.bundle.mkdir()

    def argv(self) -> list[str]:
        return (self.dir / "argv").read_text().splitlines()

    def stdin(self) -> bytes:
        return (self.dir / "stdin").read_bytes()

    def will(
        self, *, status: int = 0, out: str = "", err: str = "", log: Sequence[object] = ()
    ) -> None:
        (self.dir / "status").write_text(str(status))
        (self.dir / "out").write_text(out)
        (self.dir / "err").write_text(err)
        (self.dir / "logline").write_text("".join(json.dumps(e) + "\n" for e in log))


@pytest.fixture
def fake(tmp_path: Path) -> Fake:
    return Fake(tmp_path)


def with_runc(fake: Fake, body: Callable[[Runc], Awaitable[None]], **config: object) -> None:
    async def main() -> None:
        reaper = Reaper()
        reaper.install(asyncio.get_running_loop())
        cfg = RuntimeConfig(binary=str(fake.binary), root="/run/test-root", **config)  # type: ignore[arg-type]
        async with asyncio.timeout(10):
            await body(Runc(reaper, cfg, fake.bundle))

    asyncio.run(main())


def globals_for(fake: Fake, namespace: str = "default") -> list[str]:
    return [
        "--root",
        f"/run/test-root/{namespace}",
        "--log",
        str(fake.bundle / "log.json"),
        "--log-format",
        "json",
    ]


# -- argv -------------------------------------------------------------------------------------

B = "/b/bundle"
P = "/b/init.pid"
J = "/b/process.json"

GOLDEN: list[tuple[str, Callable[[Runc], Awaitable[object]], list[str]]] = [
    (
        "create",
        lambda r: r.create("c1", CreateOpts(Path(B), Path(P)), Stdio()),
        ["create", "--bundle", B, "--pid-file", P, "c1"],
    ),
    (
        "create-all-options",
        lambda r: r.create(
            "c1",
            CreateOpts(
                Path(B),
                Path(P),
                console_socket="/tmp/pty/pty.sock",
                no_pivot=True,
                no_new_keyring=True,
            ),
            Stdio(),
        ),
        [
            "create",
            "--bundle",
            B,
            "--pid-file",
            P,
            "--console-socket",
            "/tmp/pty/pty.sock",
            "--no-pivot",
            "--no-new-keyring",
            "c1",
        ],
    ),
    ("start", lambda r: r.start("c1"), ["start", "c1"]),
    (
        "exec",
        lambda r: r.exec("c1", Path(J), Path(P), Stdio()),
        ["exec", "--detach", "--pid-file", P, "--process", J, "c1"],
    ),
    (
        "exec-console",
        lambda r: r.exec("c1", Path(J), Path(P), Stdio(), console_socket="/s"),
        ["exec", "--detach", "--pid-file", P, "--process", J, "--console-socket", "/s", "c1"],
    ),
    ("kill", lambda r: r.kill("c1", 15), ["kill", "c1", "15"]),
    ("kill-all", lambda r: r.kill("c1", 9, all=True), ["kill", "--all", "c1", "9"]),
    ("delete", lambda r: r.delete("c1"), ["delete", "c1"]),
    ("delete-force", lambda r: r.delete("c1", force=True), ["delete", "--force", "c1"]),
    ("pause", lambda r: r.pause("c1"), ["pause", "c1"]),
    ("resume", lambda r: r.resume("c1"), ["resume", "c1"]),
    ("update", lambda r: r.update("c1", b"{}"), ["update", "--resources", "-", "c1"]),
    (
        "checkpoint",
        lambda r: r.checkpoint("c1", ["--image-path", "/img", "--leave-running"]),
        ["checkpoint", "--image-path", "/img", "--leave-running", "c1"],
    ),
    (
        "restore",
        lambda r: r.restore("c1", RestoreOpts(Path(B), Path(P), ("--image-path", "/img")), Stdio()),
        [
            "restore", "--image-path", "/img", "--detach", "--pid-file", P, "--bundle", B,
            "--no-subreaper", "c1",
        ],
    ),
    (
        "restore-all-options",
        lambda r: r.restore(
            "c1",
            RestoreOpts(Path(B), Path(P), ("--lazy-pages",), console_socket="/s", no_pivot=True),
            Stdio(),
        ),
        [
            "restore", "--lazy-pages", "--detach", "--pid-file", P, "--bundle", B,
            "--console-socket", "/s", "--no-pivot", "--no-subreaper", "c1",
        ],
    ),
    ("ps", lambda r: r.ps("c1"), ["ps", "--format", "json", "c1"]),
]


@pytest.mark.parametrize(
    ("call", "argv"), [(g[1], g[2]) for g in GOLDEN], ids=[g[0] for g in GOLDEN]
)
def test_golden_argv(
    fake: Fake, call: Callable[[Runc], Awaitable[object]], argv: list[str]
) -> None:
    async def body(r: Runc) -> None:
        await call(r)

    with_runc(fake, body)
    assert fake.argv() == [*globals_for(fake), *argv]


def test_spawn_checkpoint_argv_and_extra_fds(fake: Fake) -> None:
    async def body(r: Runc) -> None:
        rd, wr = os.pipe()
        child = r.spawn_checkpoint("c1", ["--lazy-pages"], extra_fds=[wr])
        os.close(wr)
        assert (await child.exited).status == 0
        assert await read_all(rd) == b"fd3"

    with_runc(fake, body)
    assert fake.argv() == [*globals_for(fake), "checkpoint", "--lazy-pages", "c1"]


def test_checkpoint_passes_extra_fds(fake: Fake) -> None:
    async def body(r: Runc) -> None:
        rd, wr = os.pipe()
        await r.checkpoint("c1", [], extra_fds=[wr])
        os.close(wr)
        assert await read_all(rd) == b"fd3"

    with_runc(fake, body)


def test_update_sends_resources_on_stdin(fake: Fake) -> None:
    resources = json.dumps({"memory": {"limit": 1 << 30}}).encode()

    async def body(r: Runc) -> None:
        await r.update("c1", resources)

    with_runc(fake, body)
    assert fake.stdin() == resources


def test_create_hands_the_stdio_to_the_runtime(fake: Fake) -> None:
    """With stdio given, the runtime's own 0/1/2 are the container's pipes (nothing captured)."""
    fake.will(out="runtime stdout", err="runtime stderr")

    async def body(r: Runc) -> None:
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        os.write(in_w, b"container stdin")
        os.close(in_w)
        await r.create("c1", CreateOpts(Path(B), Path(P)), Stdio(in_r, out_w, err_w))
        for fd in (in_r, out_w, err_w):
            os.close(fd)
        assert await read_all(out_r) == b"runtime stdout"
        assert await read_all(err_r) == b"runtime stderr"

    with_runc(fake, body)
    assert fake.stdin() == b"container stdin"


@pytest.mark.parametrize(
    ("out", "pids"), [("[12, 34]", [12, 34]), ("null", []), ("[]", []), ("", [])]
)
def test_ps_parses_json(fake: Fake, out: str, pids: list[int]) -> None:
    fake.will(out=out)

    async def body(r: Runc) -> None:
        assert await r.ps("c1") == pids

    with_runc(fake, body)


@pytest.mark.parametrize(
    ("config", "extra"),
    [
        ({}, []),
        ({"criu_path": "/usr/local/sbin/criu"}, ["--criu", "/usr/local/sbin/criu"]),
        ({"systemd_cgroup": True}, ["--systemd-cgroup"]),
        (
            {"criu_path": "/c", "systemd_cgroup": True, "namespace": "k8s.io"},
            ["--criu", "/c", "--systemd-cgroup"],
        ),
    ],
)
def test_global_flags(fake: Fake, config: dict[str, object], extra: list[str]) -> None:
    async def body(r: Runc) -> None:
        await r.start("c1")

    with_runc(fake, body, **config)
    namespace = str(config.get("namespace", "default"))
    assert fake.argv() == [*globals_for(fake, namespace), *extra, "start", "c1"]


def test_runtime_config_defaults() -> None:
    config = RuntimeConfig()
    assert (config.binary, config.root, config.namespace) == ("runc", DEFAULT_ROOT, "default")
    assert DEFAULT_ROOT == "/run/containerd/runc"
    runc = Runc(Reaper(), config, Path("/b"))
    assert runc.state_root == "/run/containerd/runc/default"
    assert runc.globals() == [
        "runc",
        "--root",
        "/run/containerd/runc/default",
        "--log",
        "/b/log.json",
        "--log-format",
        "json",
    ]


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "cls"),
    [
        ("container not running", NotFound),
        ("cannot kill container: Container Not Running", NotFound),
        ("process already finished", NotFound),
        ('container "c1" does not exist', NotFound),
        ("kill: no such process", NotFound),
        ("container is paused", FailedPrecondition),
        ("container not paused", FailedPrecondition),
        ("cannot resume: container is not paused", FailedPrecondition),
        ("exit status 1", ShimError),
        ("criu failed: type NOTIFY errno 0", ShimError),
        ("", ShimError),
    ],
)
def test_classify_error(message: str, cls: type[ShimError]) -> None:
    assert classify_error(message) is cls


def _log(path: Path, *entries: dict[str, str] | str) -> None:
    with open(path, "a") as f:
        for e in entries:
            f.write((e if isinstance(e, str) else json.dumps(e)) + "\n")


def test_last_log_error_takes_the_last_error_line(tmp_path: Path) -> None:
    log = tmp_path / "log.json"
    _log(
        log,
        {"level": "error", "msg": "first"},
        {"level": "fatal", "msg": "second"},
        {"level": "warning", "msg": "not an error"},
        "not json at all",
        '["not", "an", "object"]',
    )
    assert last_log_error(log) == "second"


def test_last_log_error_after_offset_ignores_older_errors(tmp_path: Path) -> None:
    log = tmp_path / "log.json"
    _log(log, {"level": "error", "msg": "an old failure"})
    offset = log.stat().st_size
    assert last_log_error(log, offset) == ""
    _log(log, {"level": "info", "msg": "fine"})
    assert last_log_error(log, offset) == ""
    _log(log, {"level": "error", "msg": "the new one"})
    assert last_log_error(log, offset) == "the new one"
    assert last_log_error(log) == "the new one"


def test_last_log_error_missing_file(tmp_path: Path) -> None:
    assert last_log_error(tmp_path / "nope.json") == ""


def _result(stderr: bytes, status: int = 1) -> Result:
    return Result(("runc",), status, b"", stderr)


def test_raise_for_prefers_the_log_over_stderr(tmp_path: Path) -> None:
    runc = Runc(Reaper(), RuntimeConfig(binary="runc"), tmp_path)
    _log(runc.log_path, {"level": "error", "msg": "container is paused"})
    with pytest.raises(FailedPrecondition, match="runc pause failed: container is paused"):
        runc.raise_for("pause", _result(b"time=... level=error msg=container not running\n"), 0)


def test_raise_for_falls_back_to_stderr_then_status(tmp_path: Path) -> None:
    runc = Runc(Reaper(), RuntimeConfig(binary="runc"), tmp_path)
    _log(runc.log_path, {"level": "error", "msg": "old: container is paused"})
    offset = runc.log_offset()
    assert offset == runc.log_path.stat().st_size
    # The old error is before the offset: stderr's last line is used.
    with pytest.raises(NotFound, match=r"runc kill failed: container not running$"):
        runc.raise_for("kill", _result(b"warning\ncontainer not running\n"), offset)
    with pytest.raises(ShimError, match=r"runc start failed: exit status 2$"):
        runc.raise_for("start", _result(b"", status=2), offset)


def test_log_offset_without_a_log(tmp_path: Path) -> None:
    assert Runc(Reaper(), RuntimeConfig(), tmp_path).log_offset() == 0


def test_failed_call_raises_the_logs_error_not_an_older_one(fake: Fake) -> None:
    _log(fake.bundle / "log.json", {"level": "error", "msg": "container does not exist"})
    fake.will(
        status=1,
        err="some noise on stderr\n",
        log=[{"level": "error", "msg": "container is paused"}],
    )

    async def body(r: Runc) -> None:
        with pytest.raises(FailedPrecondition) as info:
            await r.pause("c1")
        assert str(info.value) == f"{fake.binary} pause failed: container is paused"
        assert type(info.value) is FailedPrecondition

    with_runc(fake, body)


def test_failed_call_without_log_uses_stderr(fake: Fake) -> None:
    _log(fake.bundle / "log.json", {"level": "error", "msg": "container is paused"})
    fake.will(status=1, err="container not running\n")

    async def body(r: Runc) -> None:
        with pytest.raises(NotFound, match="kill failed: container not running"):
            await r.kill("c1", 9)
        fake.will(status=3)
        with pytest.raises(ShimError, match="start failed: exit status 3") as info:
            await r.start("c1")
        assert type(info.value) is ShimError

    with_runc(fake, body)


def test_missing_binary_raises_oserror(tmp_path: Path) -> None:
    async def main() -> None:
        reaper = Reaper()
        reaper.install(asyncio.get_running_loop())
        runc = Runc(reaper, RuntimeConfig(binary=str(tmp_path / "no-runc")), tmp_path)
        with pytest.raises(FileNotFoundError):
            await runc.start("c1")

    asyncio.run(main())
