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
    name_criu_config,
    read_spec,
    set_restore_hook,
    spec_annotations,
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


# -- name_criu_config -------------------------------------------------------------------------


def test_name_criu_config_adds_ours(tmp_path: Path) -> None:
    bundle = bundle_with(tmp_path, SPEC)
    spec = name_criu_config(bundle)
    want = {
        "io.kubernetes.cri.container-type": "container",
        CRIU_CONFIG_ANNOTATION: str(bundle / CRIU_CONFIG),
    }
    assert spec["annotations"] == want
    assert on_disk(bundle)["annotations"] == want
    # Everything else is untouched.
    assert {k: v for k, v in on_disk(bundle).items() if k != "annotations"} == {
        k: v for k, v in SPEC.items() if k != "annotations"
    }


def test_name_criu_config_without_annotations(tmp_path: Path) -> None:
    bundle = bundle_with(tmp_path, {"ociVersion": "1.0.2"})
    name_criu_config(bundle)
    assert on_disk(bundle) == {
        "ociVersion": "1.0.2",
        "annotations": {CRIU_CONFIG_ANNOTATION: str(bundle / "criu.conf")},
    }


def test_name_criu_config_keeps_a_users_annotation(tmp_path: Path) -> None:
    spec = dict(SPEC, annotations={CRIU_CONFIG_ANNOTATION: "/etc/my-criu.conf"})
    bundle = bundle_with(tmp_path, spec)
    before = (bundle / "config.json").read_bytes()
    assert name_criu_config(bundle)["annotations"] == {CRIU_CONFIG_ANNOTATION: "/etc/my-criu.conf"}
    assert (bundle / "config.json").read_bytes() == before  # not even rewritten


def test_name_criu_config_is_idempotent(tmp_path: Path) -> None:
    bundle = bundle_with(tmp_path, SPEC)
    first = name_criu_config(bundle)
    after_first = (bundle / "config.json").read_bytes()
    assert name_criu_config(bundle) == first
    assert (bundle / "config.json").read_bytes() == after_first


# -- set_restore_hook -------------------------------------------------------------------------


def create_runtime(bundle: Path) -> list[dict[str, object]]:
    hooks = on_disk(bundle)["hooks"]
    assert isinstance(hooks, dict)
    entries = hooks.get("createRuntime", [])
    assert isinstance(entries, list)
    return entries


def ours(argv: list[str], timeout: int = 30) -> dict[str, object]:
    return {"path": argv[0], "args": argv, "env": [HOOK_MARK], "timeout": timeout}


def test_set_restore_hook_adds_after_the_containers_own(tmp_path: Path) -> None:
    bundle = bundle_with(tmp_path, SPEC)
    set_restore_hook(bundle, ["/usr/bin/hook", "net", "--x"])
    theirs = {"path": "/usr/bin/theirs", "args": ["theirs", "x"]}
    assert create_runtime(bundle) == [theirs, ours(["/usr/bin/hook", "net", "--x"])]
    hooks = on_disk(bundle)["hooks"]
    assert isinstance(hooks, dict) and hooks["prestart"] == [{"path": "/usr/bin/pre"}]


def test_set_restore_hook_replaces_only_our_entry(tmp_path: Path) -> None:
    bundle = bundle_with(tmp_path, SPEC)
    set_restore_hook(bundle, ["/usr/bin/hook", "first"])
    set_restore_hook(bundle, ["/usr/bin/hook", "second"], timeout=5)
    theirs = {"path": "/usr/bin/theirs", "args": ["theirs", "x"]}
    assert create_runtime(bundle) == [theirs, ours(["/usr/bin/hook", "second"], 5)]


def test_set_restore_hook_none_removes_only_ours(tmp_path: Path) -> None:
    bundle = bundle_with(tmp_path, SPEC)
    set_restore_hook(bundle, ["/usr/bin/hook"])
    set_restore_hook(bundle, None)
    assert create_runtime(bundle) == [{"path": "/usr/bin/theirs", "args": ["theirs", "x"]}]


def test_set_restore_hook_without_hooks(tmp_path: Path) -> None:
    bundle = bundle_with(tmp_path, {"ociVersion": "1.0.2"})
    set_restore_hook(bundle, ["/h"])
    assert on_disk(bundle)["hooks"] == {"createRuntime": [ours(["/h"])]}
    set_restore_hook(bundle, None)  # the key goes away again with our entry
    assert on_disk(bundle)["hooks"] == {}
    set_restore_hook(bundle, None)  # removing twice is harmless
    assert on_disk(bundle) == {"ociVersion": "1.0.2", "hooks": {}}


def test_set_restore_hook_keeps_a_foreign_hook_with_an_env(tmp_path: Path) -> None:
    foreign = {"path": "/x", "env": ["PYRUNC_HOOK=other", "A=b"]}
    bundle = bundle_with(tmp_path, {"hooks": {"createRuntime": [foreign, "garbage"]}})
    set_restore_hook(bundle, None)
    assert create_runtime(bundle) == [foreign, "garbage"]
