"""shim.bundle: reading and amending an OCI bundle's config.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shim.bundle import (
    CRIU_CONFIG,
    CRIU_CONFIG_ANNOTATION,
    HOOK_MARK,
    cgroups_path,
    own_pid_namespace,
    process_with_terminal,
    read_spec,
    spec_annotations,
    with_criu_config,
    with_restore_hook,
    write_spec,
)

SPEC: dict[str, object] = {
    "ociVersion": "1.0.2",
    "process": {"args": ["sh"]},
    "linux": {"cgroupsPath": "/default/c1", "namespaces": [{"type": "pid"}]},
    "annotations": {"io.kubernetes.cri.container-type": "container"},
    "hooks": {
        "prestart": [{"path": "/usr/bin/pre"}],
        "createRuntime": [{"path": "/usr/bin/theirs", "args": ["theirs", "x"]}],
    },
}


def bundle_with(tmp_path: Path, spec: object) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(spec))
    return tmp_path


def on_disk(bundle: Path) -> dict[str, object]:
    data = json.loads((bundle / "config.json").read_text())
    assert isinstance(data, dict)
    return data


# -- read_spec and accessors ------------------------------------------------------------------


def test_read_spec(tmp_path: Path) -> None:
    assert read_spec(bundle_with(tmp_path, SPEC)) == SPEC


@pytest.mark.parametrize("content", [None, "", "{not json", "[1, 2]", '"a string"', "null"])
def test_read_spec_missing_or_garbage_is_empty(tmp_path: Path, content: str | None) -> None:
    if content is not None:
        (tmp_path / "config.json").write_text(content)
    assert read_spec(tmp_path) == {}


def test_read_spec_of_a_missing_bundle(tmp_path: Path) -> None:
    assert read_spec(tmp_path / "no-such-bundle") == {}


def test_spec_annotations_and_cgroups_path() -> None:
    assert spec_annotations(SPEC) == {"io.kubernetes.cri.container-type": "container"}
    assert spec_annotations({}) == {}
    assert spec_annotations({"annotations": ["not", "a", "map"]}) == {}
    assert spec_annotations({"annotations": {"n": 1}}) == {"n": "1"}
    assert cgroups_path(SPEC) == "/default/c1"
    assert cgroups_path({}) == ""
    assert cgroups_path({"linux": {}}) == ""
    assert cgroups_path({"linux": "garbage"}) == ""


def test_write_spec_replaces_atomically(tmp_path: Path) -> None:
    bundle_with(tmp_path, {"old": True})
    write_spec(tmp_path, {"new": True})
    assert on_disk(tmp_path) == {"new": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


# -- with_criu_config ---------------------------------------------------------------------


def test_with_criu_config_adds_ours(tmp_path: Path) -> None:
    spec = with_criu_config(SPEC, tmp_path)
    want = {
        "io.kubernetes.cri.container-type": "container",
        CRIU_CONFIG_ANNOTATION: str(tmp_path / CRIU_CONFIG),
    }
    assert spec["annotations"] == want
    # Everything else is untouched, and so is the spec it was given.
    assert {k: v for k, v in spec.items() if k != "annotations"} == {
        k: v for k, v in SPEC.items() if k != "annotations"
    }
    assert SPEC["annotations"] == {"io.kubernetes.cri.container-type": "container"}


def test_with_criu_config_without_annotations(tmp_path: Path) -> None:
    assert with_criu_config({"ociVersion": "1.0.2"}, tmp_path) == {
        "ociVersion": "1.0.2",
        "annotations": {CRIU_CONFIG_ANNOTATION: str(tmp_path / "criu.conf")},
    }


def test_with_criu_config_keeps_a_users_annotation(tmp_path: Path) -> None:
    spec = dict(SPEC, annotations={CRIU_CONFIG_ANNOTATION: "/etc/my-criu.conf"})
    assert with_criu_config(spec, tmp_path) is spec  # the same object: nothing to write


def test_with_criu_config_is_idempotent(tmp_path: Path) -> None:
    first = with_criu_config(SPEC, tmp_path)
    assert with_criu_config(first, tmp_path) is first


# -- with_restore_hook ---------------------------------------------------------------------


def create_runtime(spec: dict[str, object]) -> list[dict[str, object]]:
    hooks = spec["hooks"]
    assert isinstance(hooks, dict)
    entries = hooks.get("createRuntime", [])
    assert isinstance(entries, list)
    return entries


def ours(argv: list[str], timeout: int = 30) -> dict[str, object]:
    return {"path": argv[0], "args": argv, "env": [HOOK_MARK], "timeout": timeout}


def test_with_restore_hook_adds_after_the_containers_own() -> None:
    spec = with_restore_hook(SPEC, ["/usr/bin/hook", "net", "--x"])
    theirs = {"path": "/usr/bin/theirs", "args": ["theirs", "x"]}
    assert create_runtime(spec) == [theirs, ours(["/usr/bin/hook", "net", "--x"])]
    hooks = spec["hooks"]
    assert isinstance(hooks, dict) and hooks["prestart"] == [{"path": "/usr/bin/pre"}]
    assert create_runtime(SPEC) == [theirs]  # the given spec is left alone


def test_with_restore_hook_replaces_only_our_entry() -> None:
    spec = with_restore_hook(SPEC, ["/usr/bin/hook", "first"])
    spec = with_restore_hook(spec, ["/usr/bin/hook", "second"], timeout=5)
    theirs = {"path": "/usr/bin/theirs", "args": ["theirs", "x"]}
    assert create_runtime(spec) == [theirs, ours(["/usr/bin/hook", "second"], 5)]


def test_with_restore_hook_none_removes_only_ours() -> None:
    spec = with_restore_hook(with_restore_hook(SPEC, ["/usr/bin/hook"]), None)
    assert create_runtime(spec) == [{"path": "/usr/bin/theirs", "args": ["theirs", "x"]}]


def test_with_restore_hook_without_hooks(tmp_path: Path) -> None:
    spec = with_restore_hook({"ociVersion": "1.0.2"}, ["/h"])
    assert spec["hooks"] == {"createRuntime": [ours(["/h"])]}
    spec = with_restore_hook(spec, None)  # the key goes away again with our entry
    assert spec["hooks"] == {}
    spec = with_restore_hook(spec, None)  # removing twice is harmless
    assert spec == {"ociVersion": "1.0.2", "hooks": {}}
    write_spec(tmp_path, spec)
    assert on_disk(tmp_path) == spec


def test_with_restore_hook_keeps_a_foreign_hook_with_an_env() -> None:
    foreign = {"path": "/x", "env": ["PYRUNC_HOOK=other", "A=b"]}
    spec = with_restore_hook({"hooks": {"createRuntime": [foreign, "garbage"]}}, None)
    assert create_runtime(spec) == [foreign, "garbage"]


@pytest.mark.parametrize(
    ("namespaces", "own"),
    [
        ([{"type": "pid"}, {"type": "mount"}], True),
        ([{"type": "mount"}], False),  # the host's (oci.WithHostNamespace drops the entry)
        ([{"type": "pid", "path": "/proc/42/ns/pid"}], False),  # another's, joined
        (None, False),
    ],
)
def test_own_pid_namespace(namespaces: object, own: bool) -> None:
    """As containerd's ShouldKillAllOnExit: only a pid entry without a path is the
    container's own namespace."""
    spec: dict[str, object] = {"linux": {"namespaces": namespaces}}
    assert own_pid_namespace(spec) is own
    assert own_pid_namespace({}) is False


def test_process_with_terminal() -> None:
    process = json.dumps({"args": ["sh"], "terminal": False}).encode()
    assert process_with_terminal(process, False) is process  # unchanged: the same bytes
    assert json.loads(process_with_terminal(process, True)) == {"args": ["sh"], "terminal": True}
    bare = json.dumps({"args": ["sh"]}).encode()
    assert json.loads(process_with_terminal(bare, True))["terminal"] is True
    with pytest.raises(ValueError):
        process_with_terminal(b"[]", True)
    with pytest.raises(ValueError):
        process_with_terminal(b"{nope", True)
