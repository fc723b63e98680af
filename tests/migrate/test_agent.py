"""shim.migrate._agent and _transfer helpers: per-host spec and runtime options, the status
mapping, the rootfs diff's upper dir."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from google.protobuf import any_pb2

from shim.api.containerd.runc.options import oci_pb2
from shim.migrate._agent import _keep_criu_log, _runtime_options, _spec, status_of
from shim.migrate._errors import ContainerdError, MigrateError, Refused, TransferFailed
from shim.migrate._transfer import upper_dir
from shim.typeurl import pack, unpack

SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"


def spec(path: str) -> any_pb2.Any:
    body = {"ociVersion": "1.0.2", "linux": {"cgroupsPath": path}}
    return any_pb2.Any(type_url=SPEC_URL, value=json.dumps(body).encode())


def test_spec_unchanged_without_a_cgroup_parent() -> None:
    given = spec("/pyrunc-it/c1")
    assert _spec(given, "") is given


@pytest.mark.parametrize(("path", "moved"), [
    ("/pyrunc-it/c1", "/here/c1"),
    ("c1", "/here/c1"),
    ("system.slice:cri:c1", "system.slice:cri:c1"),  # systemd form: left alone
])
def test_spec_cgroup_reparented(path: str, moved: str) -> None:
    out = _spec(spec(path), "/here/")
    assert out.type_url == SPEC_URL
    assert json.loads(out.value)["linux"]["cgroupsPath"] == moved


def test_runtime_options_root_set_and_others_kept() -> None:
    given = pack(oci_pb2.Options(binary_name="runc", systemd_cgroup=False, criu_path="/c"))
    out = _runtime_options(given, "/run/b/runc")
    assert out is not None
    options = unpack(out, oci_pb2.Options)
    assert options is not None
    assert (options.root, options.binary_name, options.criu_path) == ("/run/b/runc", "runc", "/c")
    assert _runtime_options(given, "") is given
    assert _runtime_options(None, "") is None
    made = _runtime_options(None, "/r")
    assert made is not None and unpack(made, oci_pb2.Options).root == "/r"  # type: ignore[union-attr]


@pytest.mark.parametrize(("exc", "code"), [
    (Refused("x"), grpc.StatusCode.FAILED_PRECONDITION),
    (ContainerdError("NOT_FOUND", "x"), grpc.StatusCode.NOT_FOUND),
    (ContainerdError("WHATEVER", "x"), grpc.StatusCode.UNKNOWN),
    (TransferFailed("x"), grpc.StatusCode.ABORTED),
    (MigrateError("x"), grpc.StatusCode.ABORTED),
    (RuntimeError("x"), grpc.StatusCode.INTERNAL),
])
def test_status_of(exc: BaseException, code: grpc.StatusCode) -> None:
    assert status_of(exc)[0] is code


def test_criu_log_named_in_an_error_is_kept(tmp_path: Path) -> None:
    log = tmp_path / "bundle" / "criu-restore.log"
    log.parent.mkdir()
    log.write_text("Error (criu/x.c:1): boom\n")
    message = f"restore failed (CRIU log kept at {log}; CRIU says: boom)"
    kept = _keep_criu_log(message, tmp_path / "logs", "c1")
    assert kept.endswith("c1-criu-restore-failed.log")
    assert Path(kept).read_text() == "Error (criu/x.c:1): boom\n"
    assert _keep_criu_log("no log here", tmp_path / "logs", "c1") == ""


def mount(kind: str, *options: str) -> SimpleNamespace:
    return SimpleNamespace(type=kind, options=list(options))


def test_upper_dir_of_an_overlay() -> None:
    m = mount("overlay", "index=off", "workdir=/s/2/work", "upperdir=/s/2/fs", "lowerdir=/s/1/fs")
    assert upper_dir([m]) == "/s/2/fs"


def test_upper_dir_refuses_other_snapshotters() -> None:
    with pytest.raises(MigrateError, match="only the overlayfs snapshotter"):
        upper_dir([mount("bind", "rbind", "rw")])


def test_an_agent_without_certificates_refuses_a_source_that_asks_for_tls(
        tmp_path: Path) -> None:
    from shim.api.pyrunc.migrate.v1 import agent_pb2
    from shim.migrate._agent import AgentConfig, _Receive

    cfg = AgentConfig(listen=("unix:///a.sock",), containerd="/nowhere.sock",
                      work_dir=tmp_path)
    recv = _Receive(cfg, agent_pb2.Begin(container_id="c1", page_server_tls=True))
    with pytest.raises(Refused, match="no certificates"):
        recv.prepare("10.0.0.2")  # before containerd is asked anything


def test_criu_tls_args_are_absolute_and_skip_the_name_check_only_when_told(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shim.migrate._tls import TlsFiles, criu_tls_args

    monkeypatch.chdir(tmp_path)
    files = TlsFiles(cert="c.pem", key="k.pem", ca="/pki/ca.pem")
    assert criu_tls_args(files, verify_name=True) == [
        "--tls", "--tls-cacert", "/pki/ca.pem", "--tls-cert", str(tmp_path / "c.pem"),
        "--tls-key", str(tmp_path / "k.pem")]
    assert criu_tls_args(files, verify_name=False)[-1] == "--tls-no-cn-verify"
