"""The CRIU RPC codec, the client against a scripted fake ``criu swrk``, and the capability rules.

Golden packets were captured from CRIU 4.1.1 (``criu swrk``) on the development VM. The fake
criu is a small Python program that plays back a script on its fd 3, so the client's
conversation loop (notifications, SCM_RIGHTS fds, deaths, timeouts) is tested without root.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

import shim.checkpoint.criu._capabilities as capabilities_module
from shim.api.criu import rpc_pb2
from shim.checkpoint.criu import (
    LAZY_PAGES_PIPE_SIZE,
    MAX_PACKET,
    Criu,
    CriuCapabilities,
    CriuExited,
    CriuFeatures,
    CriuProtocolError,
    CriuRequestFailed,
    CriuResponse,
    CriuVersion,
    HostFacts,
    Notification,
    ReqType,
    Requirements,
    check_response,
    clear_capability_cache,
    criu_binary,
    decode_response,
    encode_notify_reply,
    encode_request,
    ensure_capable,
    format_version,
    parse_cap_eff,
    unmet_requirements,
)
from shim.errors import FailedPrecondition, Internal, InvalidArgument
from shim.reaper import Reaper

T = TypeVar("T")

# Captured from CRIU 4.1.1.
VERSION_4_1_1 = bytes.fromhex("080a10015206080410012001")
FEATURES_NO_SOFT_DIRTY = bytes.fromhex("080910014206080010011801")
CHECK_FAILED = bytes.fromhex("08031000")
CHECK_OK = bytes.fromhex("08031001")
NOTIFY_PRE_DUMP = bytes.fromhex("080610012a0a0a087072652d64756d70")
DUMP_OK = bytes.fromhex(
    "080110011a0208004a5e4572726f722028637269752f7574696c2e633a31353333293a20726c696d69743a"
    "2043616e277420736574757020524c494d49545f4e4f46494c4520666f722073656c663a204f70657261"
    "74696f6e206e6f74207065726d69747465640a"
)
DUMP_FAILED_ESRCH = bytes.fromhex(
    "080110001a02080038034a5e4572726f722028637269752f7574696c2e633a31353333293a20726c696d69"
    "743a2043616e277420736574757020524c494d49545f4e4f46494c4520666f722073656c663a204f7065"
    "726174696f6e206e6f74207065726d69747465640a"
)
RLIMIT_MSG = (
    "Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self: "
    "Operation not permitted\n"
)


# --------------------------------------------------------------------------------------------
# Codec


def test_req_type_matches_the_generated_enum() -> None:
    generated = rpc_pb2.criu_req_type
    assert {t.name: t.value for t in ReqType} == {
        name: generated.Value(name)
        for name in generated.keys()  # noqa: SIM118
    }


@pytest.mark.parametrize(
    ("packet", "golden"),
    [
        (encode_request(ReqType.VERSION), "080a"),
        (encode_notify_reply(True), "08061801"),
        (encode_notify_reply(False), "08061800"),
        (
            encode_request(
                ReqType.FEATURE_CHECK,
                rpc_pb2.criu_opts(images_dir_fd=5),
                CriuFeatures(mem_track=True, lazy_pages=True),
            ),
            # type=9, opts{images_dir_fd=5}, features{mem_track=1, lazy_pages=1}
            "0809120208052a0408011001",
        ),
        (
            encode_request(ReqType.FEATURE_CHECK, features=CriuFeatures(pidfd_store=False)),
            "08092a021800",
        ),
        (encode_request(ReqType.WAIT_PID, pid=300), "080b30ac02"),
        (encode_request(ReqType.CHECK, keep_open=True), "08032001"),
        (
            encode_request(
                ReqType.DUMP,
                rpc_pb2.criu_opts(images_dir_fd=7, pid=42, leave_running=True, log_file="d.log"),
            ),
            "0801120d0807102a18015205642e6c6f67",
        ),
    ],
)
def test_encode_golden(packet: bytes, golden: str) -> None:
    assert packet.hex() == golden


def test_encode_refuses_opts_without_images_dir_fd() -> None:
    with pytest.raises(InvalidArgument, match="images_dir_fd"):
        encode_request(ReqType.DUMP, rpc_pb2.criu_opts(pid=3))


def test_decode_version() -> None:
    resp = decode_response(VERSION_4_1_1)
    assert resp == CriuResponse(type=ReqType.VERSION, success=True, version=CriuVersion(4, 1, 1))


def test_decode_features() -> None:
    resp = decode_response(FEATURES_NO_SOFT_DIRTY)
    assert resp.features == CriuFeatures(mem_track=False, lazy_pages=True, pidfd_store=True)
    partial = rpc_pb2.criu_resp(type="FEATURE_CHECK", success=True)
    partial.features.lazy_pages = True
    assert decode_response(partial.SerializeToString()).features == CriuFeatures(lazy_pages=True)


def test_decode_notify_dump_and_failure() -> None:
    assert decode_response(NOTIFY_PRE_DUMP) == CriuResponse(
        type=ReqType.NOTIFY, success=True, notify=Notification("pre-dump")
    )
    ok = decode_response(DUMP_OK)
    # A successful answer may still carry the first error CRIU logged (non-fatal here).
    assert (ok.success, ok.dump_restored, ok.cr_errmsg) == (True, False, RLIMIT_MSG)
    failed = decode_response(DUMP_FAILED_ESRCH)
    assert (failed.success, failed.cr_errno, failed.cr_errmsg) == (False, 3, RLIMIT_MSG)


def test_decode_restore_and_status() -> None:
    msg = rpc_pb2.criu_resp(type="RESTORE", success=True)
    msg.restore.pid = 1234
    assert decode_response(msg.SerializeToString()).restore_pid == 1234
    msg = rpc_pb2.criu_resp(type="WAIT_PID", success=True, status=9)
    assert decode_response(msg.SerializeToString()).status == 9
    msg = rpc_pb2.criu_resp(type="NOTIFY", success=True)
    msg.notify.script = "post-restore"
    msg.notify.pid = 77
    assert decode_response(msg.SerializeToString()).notify == Notification("post-restore", 77)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\xff", "undecodable"),
        (VERSION_4_1_1[:-3], "undecodable"),  # cut inside the version sub-message
        (b"", "lacks required fields: type, success"),
        (bytes.fromhex("0801"), "lacks required fields: success"),
        (bytes.fromhex("08631001"), "lacks required fields: type"),  # type 99 is not known
        (bytes.fromhex("080a10015200"), "version.major_number, version.minor_number"),
    ],
)
def test_decode_malformed(data: bytes, match: str) -> None:
    with pytest.raises(CriuProtocolError, match=match) as info:
        decode_response(data)
    assert isinstance(info.value, Internal)


def test_check_response_failure_carries_errno_and_message() -> None:
    with pytest.raises(CriuRequestFailed) as info:
        check_response(decode_response(DUMP_FAILED_ESRCH), ReqType.DUMP, log_path="/w/dump.log")
    exc = info.value
    assert (exc.request, exc.cr_errno, exc.cr_errmsg, exc.log_path) == (
        ReqType.DUMP,
        3,
        RLIMIT_MSG,
        "/w/dump.log",
    )
    assert str(exc) == (
        "criu DUMP failed (errno 3 ESRCH): " + RLIMIT_MSG.strip() + "\nlog file: /w/dump.log"
    )
    with pytest.raises(CriuRequestFailed, match=r"^criu CHECK failed$"):
        check_response(decode_response(CHECK_FAILED), ReqType.CHECK)
    # CRIU answers a request it cannot handle with type EMPTY; still a failure, not a mismatch.
    invalid = rpc_pb2.criu_resp(type="EMPTY", success=False, cr_errmsg="Invalid req")
    with pytest.raises(CriuRequestFailed, match="Invalid req"):
        check_response(decode_response(invalid.SerializeToString()), ReqType.VERSION)


def test_check_response_types() -> None:
    assert check_response(decode_response(CHECK_OK), ReqType.CHECK).success
    with pytest.raises(CriuProtocolError, match="answered a DUMP request with CHECK"):
        check_response(decode_response(CHECK_OK), ReqType.DUMP)
    ps = decode_response(rpc_pb2.criu_resp(type="PAGE_SERVER", success=True).SerializeToString())
    assert check_response(ps, ReqType.PAGE_SERVER_CHLD) is ps


@pytest.mark.parametrize(
    ("version", "number", "text"),
    [
        (CriuVersion(4, 1, 1), 40101, "4.1.1"),
        (CriuVersion(3, 17, 1), 31701, "3.17.1"),
        (CriuVersion(3, 19), 31900, "3.19"),
        (CriuVersion(3, 0), 30000, "3.0"),
        # a git build is newer than its release: rounded up to the next minor (go-criu)
        (CriuVersion(3, 17, 1, gitid="v3.17.1-12-gabc"), 31800, "3.17.1 (git v3.17.1-12-gabc)"),
        (CriuVersion(3, 19, gitid="abc"), 32000, "3.19 (git abc)"),
        (CriuVersion(3, 99, 5, gitid="abc"), 40000, "3.99.5 (git abc)"),
    ],
)
def test_version_number(version: CriuVersion, number: int, text: str) -> None:
    assert version.number == number
    assert str(version) == text


def test_format_version() -> None:
    assert format_version(31900) == "3.19"
    assert format_version(31701) == "3.17.1"
    assert format_version(40000) == "4.0"


# --------------------------------------------------------------------------------------------
# Capabilities

GOOD_HOST = HostFacts(pipe_max_size=LAZY_PAGES_PIPE_SIZE, cap_sys_resource=False)


CRIU_4_1_1 = CriuVersion(4, 1, 1)


def caps(
    version: CriuVersion = CRIU_4_1_1,
    mem_track: bool | None = True,
    lazy_pages: bool | None = True,
    host: HostFacts = GOOD_HOST,
) -> CriuCapabilities:
    return CriuCapabilities(
        "criu", version, CriuFeatures(mem_track=mem_track, lazy_pages=lazy_pages), host
    )


def test_requirements_defaults() -> None:
    assert Requirements() == Requirements(min_version=30000, mem_track=False, lazy_pages=False)


@pytest.mark.parametrize(
    ("req", "measured", "expected"),
    [
        (Requirements(), caps(mem_track=False, lazy_pages=False), []),
        (Requirements(min_version=40101), caps(), []),
        (
            Requirements(min_version=31900),
            caps(version=CriuVersion(3, 17, 1)),
            ["CRIU 3.17.1 is older than the 3.19 this checkpoint needs"],
        ),
        (
            Requirements(mem_track=True),
            caps(mem_track=False),
            [
                "pre-dump needs memory dirty tracking (soft-dirty), which this kernel does not "
                "offer (CRIU FEATURE_CHECK mem_track=false)"
            ],
        ),
        (
            Requirements(lazy_pages=True),
            caps(lazy_pages=False),
            [
                "lazy pages need userfaultfd with non-cooperative events, which this kernel "
                "does not offer (CRIU FEATURE_CHECK lazy_pages=false)"
            ],
        ),
        (
            Requirements(lazy_pages=True),
            caps(host=HostFacts(1048576, cap_sys_resource=False)),
            [
                "fs.pipe-max-size is 1048576; CRIU's lazy page server needs 4194304 without "
                "CAP_SYS_RESOURCE: sysctl -w fs.pipe-max-size=4194304"
            ],
        ),
        # with CAP_SYS_RESOURCE the pipe can grow beyond the limit
        (Requirements(lazy_pages=True), caps(host=HostFacts(1048576, cap_sys_resource=True)), []),
        (Requirements(lazy_pages=True), caps(host=HostFacts(8 << 20, False)), []),
        # the pipe limit matters only for lazy pages
        (Requirements(mem_track=True), caps(host=HostFacts(4096, False)), []),
    ],
)
def test_unmet_requirements(
    req: Requirements, measured: CriuCapabilities, expected: list[str]
) -> None:
    assert unmet_requirements(req, measured) == expected


def test_unmet_requirements_lists_every_problem() -> None:
    problems = unmet_requirements(
        Requirements(min_version=50000, mem_track=True, lazy_pages=True),
        caps(mem_track=None, lazy_pages=False, host=HostFacts(65536, False)),
    )
    assert len(problems) == 4
    assert "mem_track=unknown" in problems[1]


def test_parse_cap_eff() -> None:
    status = "Name:\tpython\nCapPrm:\t000001fffeffffff\nCapEff:\t000001fffeffffff\n"
    cap_eff = parse_cap_eff(status)
    assert cap_eff == 0x1FFFEFFFFFF
    assert not cap_eff >> 24 & 1  # this VM's root: everything but CAP_SYS_RESOURCE
    assert parse_cap_eff("CapEff:\t0000003fffffffff\n") >> 24 & 1
    assert parse_cap_eff("Name:\tx\n") == 0


class FakeCriu(Criu):
    """A Criu whose answers are given values; counts the questions."""

    def __init__(self, version: CriuVersion, features: CriuFeatures, binary: str) -> None:
        super().__init__(Reaper(), binary)
        self._version = version
        self._features = features
        self.asked = 0

    async def version(self, *, timeout: float = 60.0) -> CriuVersion:
        self.asked += 1
        return self._version

    async def features(
        self,
        mem_track: bool = True,
        lazy_pages: bool = True,
        pidfd_store: bool = False,
        *,
        timeout: float = 60.0,
    ) -> CriuFeatures:
        self.asked += 1
        return self._features


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clear_capability_cache()
    monkeypatch.setattr(capabilities_module, "PROBE_CACHE_DIR", str(tmp_path / "probe-cache"))


def test_ensure_capable_raises_failed_precondition_naming_what_is_missing() -> None:
    fake = FakeCriu(CriuVersion(4, 1, 1), CriuFeatures(False, True, True), "/fake/criu-a")
    got = run(ensure_capable(fake, Requirements(lazy_pages=True), host=GOOD_HOST))
    assert got == CriuCapabilities(
        "/fake/criu-a", CriuVersion(4, 1, 1), CriuFeatures(False, True, True), GOOD_HOST
    )
    with pytest.raises(FailedPrecondition, match=r"^pre-dump needs memory dirty tracking"):
        run(ensure_capable(fake, Requirements(mem_track=True), host=GOOD_HOST))
    with pytest.raises(FailedPrecondition, match=r"fs\.pipe-max-size is 1048576;"):
        run(ensure_capable(fake, Requirements(lazy_pages=True), host=HostFacts(1048576, False)))
    # CRIU was asked once (version + features); host facts are never cached.
    assert fake.asked == 2


def test_capability_cache_is_per_binary_and_clearable() -> None:
    a = FakeCriu(CriuVersion(4, 1, 1), CriuFeatures(True, True, True), "/fake/criu-a")
    b = FakeCriu(CriuVersion(3, 17, 1), CriuFeatures(True, True, True), "/fake/criu-b")
    run(ensure_capable(a, Requirements(), host=GOOD_HOST))
    with pytest.raises(FailedPrecondition, match=r"CRIU 3\.17\.1 is older than the 3\.19"):
        run(ensure_capable(b, Requirements(min_version=31900), host=GOOD_HOST))
    run(ensure_capable(a, Requirements(), host=GOOD_HOST))
    assert (a.asked, b.asked) == (2, 2)
    clear_capability_cache()
    run(ensure_capable(a, Requirements(), host=GOOD_HOST))
    assert a.asked == 4


def test_criu_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = tmp_path / "bin" / "criu"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    plain = tmp_path / "other" / "criu"
    plain.parent.mkdir()
    plain.write_text("")  # not executable: skipped in PATH
    monkeypatch.setenv("PATH", f"{plain.parent}:{exe.parent}")
    assert criu_binary("") == str(exe)
    assert criu_binary(str(exe)) == str(exe)
    with pytest.raises(FailedPrecondition, match="not executable"):
        criu_binary(str(plain))
    with pytest.raises(FailedPrecondition, match="'criu-nope' not found in PATH"):
        criu_binary("criu-nope")


# --------------------------------------------------------------------------------------------
# Client, against a scripted fake `criu swrk 3`

FAKE_CRIU = """\
#!{python}
# A scripted stand-in for `criu swrk 3`: plays back STEPS on fd 3, records what it receives.
import array, os, signal, socket, sys, time
assert sys.argv[1:] == ["swrk", "3"], sys.argv
sk = socket.socket(fileno=3)
record = open({record!r}, "a")
for op, arg in {steps!r}:
    if op == "recv":
        record.write(sk.recv(65536).hex() + "\\n")
        record.flush()
    elif op == "send":
        sk.send(bytes.fromhex(arg))
    elif op == "send_fd":  # the packet, with the read end of a pipe holding b"pty"
        r, w = os.pipe()
        os.write(w, b"pty")
        os.close(w)
        sk.sendmsg([bytes.fromhex(arg)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                           array.array("i", [r]))])
        os.close(r)
    elif op == "sleep":
        time.sleep(arg)
    elif op == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif op == "exit":
        sys.exit(arg)
"""

Step = tuple[str, object]


def fake_criu(tmp_path: Path, steps: list[Step]) -> tuple[str, Path]:
    record = tmp_path / "received"
    path = tmp_path / "criu"
    path.write_text(FAKE_CRIU.format(python=sys.executable, record=str(record), steps=steps))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path), record


def received(record: Path) -> list[str]:
    return record.read_text().split() if record.exists() else []


def with_criu(binary: str, body: Callable[[Criu], Awaitable[T]]) -> T:
    async def main() -> T:
        reaper = Reaper()
        reaper.install(asyncio.get_running_loop())
        return await body(Criu(reaper, binary))

    return asyncio.run(main())


def test_client_version(tmp_path: Path) -> None:
    binary, record = fake_criu(tmp_path, [("recv", None), ("send", VERSION_4_1_1.hex())])
    assert with_criu(binary, lambda c: c.version()) == CriuVersion(4, 1, 1)
    assert received(record) == ["080a"]


def test_client_features_sends_opts_and_masks_unasked(tmp_path: Path) -> None:
    binary, record = fake_criu(tmp_path, [("recv", None), ("send", FEATURES_NO_SOFT_DIRTY.hex())])
    got = with_criu(binary, lambda c: c.features())
    assert got == CriuFeatures(mem_track=False, lazy_pages=True, pidfd_store=None)
    req = rpc_pb2.criu_req()
    req.ParseFromString(bytes.fromhex(received(record)[0]))
    assert req.type == rpc_pb2.FEATURE_CHECK
    assert req.opts.images_dir_fd > 2  # a real fd of ours, kept open during the call
    assert (req.features.mem_track, req.features.lazy_pages) == (True, True)
    assert not req.features.HasField("pidfd_store")


def test_client_answers_notifications_and_drops_their_fds(tmp_path: Path) -> None:
    """Notifications are answered; a descriptor CRIU attaches to one (orphan-pts-master) is
    not received, so none is left open in the shim."""
    pts = rpc_pb2.criu_resp(type="NOTIFY", success=True)
    pts.notify.script = "orphan-pts-master"
    restore = rpc_pb2.criu_resp(type="RESTORE", success=True)
    restore.restore.pid = 4321
    binary, record = fake_criu(
        tmp_path,
        [
            ("recv", None),
            ("send", NOTIFY_PRE_DUMP.hex()),
            ("recv", None),
            ("send_fd", pts.SerializeToString().hex()),
            ("recv", None),
            ("send", restore.SerializeToString().hex()),
        ],
    )
    seen: list[tuple[str, int]] = []

    async def on_notify(n: Notification) -> bool:
        seen.append((n.script, n.pid))
        return True

    async def body(c: Criu) -> CriuResponse:
        fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
        try:
            opts = rpc_pb2.criu_opts(images_dir_fd=fd)
            return await c.call(ReqType.RESTORE, opts, on_notify=on_notify)
        finally:
            os.close(fd)

    before = set(os.listdir("/proc/self/fd"))
    resp = with_criu(binary, body)
    assert resp.restore_pid == 4321
    assert seen == [("pre-dump", 0), ("orphan-pts-master", 0)]
    assert received(record)[1:] == ["08061801", "08061801"]
    assert set(os.listdir("/proc/self/fd")) <= before


def test_client_handler_refusal_makes_criu_abort(tmp_path: Path) -> None:
    binary, record = fake_criu(
        tmp_path,
        [
            ("recv", None),
            ("send", NOTIFY_PRE_DUMP.hex()),
            ("recv", None),
            ("send", DUMP_FAILED_ESRCH.hex()),
            ("exit", 1),
        ],
    )

    async def body(c: Criu) -> CriuResponse:
        return await c.call(ReqType.DUMP, rpc_pb2.criu_opts(images_dir_fd=0), on_notify=no)

    def no(_: Notification) -> bool:
        return False

    with pytest.raises(CriuRequestFailed, match="errno 3"):
        with_criu(binary, body)
    assert received(record)[1:] == ["08061800"]


def test_client_handler_exception_is_reraised_after_criu_answered(tmp_path: Path) -> None:
    binary, record = fake_criu(
        tmp_path,
        [
            ("recv", None),
            ("send", NOTIFY_PRE_DUMP.hex()),
            ("recv", None),
            ("send", DUMP_FAILED_ESRCH.hex()),
            ("exit", 1),
        ],
    )

    def boom(_: Notification) -> bool:
        raise RuntimeError("hook failed")

    async def body(c: Criu) -> CriuResponse:
        return await c.call(ReqType.DUMP, rpc_pb2.criu_opts(images_dir_fd=0), on_notify=boom)

    with pytest.raises(RuntimeError, match="hook failed") as info:
        with_criu(binary, body)
    assert isinstance(info.value.__cause__, CriuRequestFailed)
    assert received(record)[1:] == ["08061800"]


@pytest.mark.parametrize(
    ("steps", "match"),
    [
        (
            [("recv", None), ("kill", None)],
            r"exited before answering \(VERSION request, "
            r"killed by SIGKILL\)",
        ),
        (
            [("recv", None), ("exit", 0)],
            r"exited before answering \(VERSION request, exit "
            r"status 0\)",
        ),
        ([("exit", 3)], r"exit status 3"),
        (
            [("recv", None), ("send", VERSION_4_1_1.hex()), ("exit", 2)],
            r"exited with an error after answering VERSION \(VERSION request, exit status 2\)",
        ),
    ],
)
def test_client_criu_death_is_a_clear_error(tmp_path: Path, steps: list[Step], match: str) -> None:
    binary, _ = fake_criu(tmp_path, steps)
    with pytest.raises(CriuExited, match=match):
        with_criu(binary, lambda c: c.version(timeout=10))


def test_client_pre_dump_exit_status_is_tolerated(tmp_path: Path) -> None:
    pre = rpc_pb2.criu_resp(type="PRE_DUMP", success=True)
    binary, _ = fake_criu(
        tmp_path, [("recv", None), ("send", pre.SerializeToString().hex()), ("exit", 1)]
    )
    resp = with_criu(binary, lambda c: c.call(ReqType.PRE_DUMP, rpc_pb2.criu_opts(images_dir_fd=0)))
    assert resp.type is ReqType.PRE_DUMP


def children_of_this_process() -> list[str]:
    pid = os.getpid()
    return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()


def test_client_timeout_kills_criu(tmp_path: Path) -> None:
    binary, _ = fake_criu(tmp_path, [("recv", None), ("sleep", 60)])
    before = children_of_this_process()
    with pytest.raises(TimeoutError, match=r"did not finish a VERSION request within 0\.5 s"):
        with_criu(binary, lambda c: c.version(timeout=0.5))
    assert children_of_this_process() == before  # killed and reaped


def test_client_cancellation_kills_criu(tmp_path: Path) -> None:
    binary, _ = fake_criu(tmp_path, [("recv", None), ("sleep", 60)])

    async def body(c: Criu) -> int:
        task = asyncio.ensure_future(c.version())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return len(children_of_this_process())

    assert with_criu(binary, body) == len(children_of_this_process())


def test_client_oversized_packet_is_a_protocol_error(tmp_path: Path) -> None:
    big = rpc_pb2.criu_resp(type="VERSION", success=True, cr_errmsg="x" * MAX_PACKET)
    binary, _ = fake_criu(
        tmp_path, [("recv", None), ("send", big.SerializeToString().hex()), ("sleep", 60)]
    )
    with pytest.raises(CriuProtocolError, match="larger than"):
        with_criu(binary, lambda c: c.version(timeout=10))


def test_client_garbage_is_a_protocol_error(tmp_path: Path) -> None:
    binary, _ = fake_criu(tmp_path, [("recv", None), ("send", "ff"), ("sleep", 60)])
    with pytest.raises(CriuProtocolError, match="undecodable"):
        with_criu(binary, lambda c: c.version(timeout=10))


def test_client_missing_binary_is_failed_precondition(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="cannot run CRIU"):
        with_criu(str(tmp_path / "no-criu"), lambda c: c.version())


def test_sigkill_name_in_messages() -> None:
    exc = CriuExited(ReqType.DUMP, 128 + signal.SIGKILL, "exited before answering")
    assert str(exc) == "criu swrk exited before answering (DUMP request, killed by SIGKILL)"
    assert exc.status == 137


def test_probe_results_are_shared_through_the_cache_dir(tmp_path: Path) -> None:
    """A second shim (a fresh process: empty memory cache) reads the first one's answer; a
    changed binary is asked again."""
    exe = tmp_path / "criu"
    exe.write_text("#!/bin/sh\n")
    fake = FakeCriu(CriuVersion(4, 1, 1), CriuFeatures(False, True, True), str(exe))
    found = (CriuVersion(4, 1, 1), CriuFeatures(False, True, True))
    assert run(capabilities_module.probe(fake)) == found
    assert fake.asked == 2
    clear_capability_cache()
    assert run(capabilities_module.probe(fake)) == found
    assert fake.asked == 2  # from the cache directory
    exe.write_text("#!/bin/sh\n# another build\n")
    clear_capability_cache()
    run(capabilities_module.probe(fake))
    assert fake.asked == 4
    run(capabilities_module.probe(fake, refresh=True))
    assert fake.asked == 6
