#!/usr/bin/env bash
# Generate the Python protobuf modules in shim/api/ from the .proto files in protos/.
#
#   hack/gen-protos.sh           regenerate shim/api/ (replaces it entirely)
#   hack/gen-protos.sh --check   regenerate into a temp dir and compare with shim/api/;
#                                exit 1 if they differ
#
# protos/a/b/c.proto becomes shim/api/a/b/c_pb2.py and c_pb2.pyi, with an __init__.py in
# every package directory. The gRPC services of containerd (protos/containerd/services/*,
# except the ttrpc ones under services/ttrpc/, which the shim serves with its own ttrpc code)
# also get c_pb2_grpc.py, the grpcio stubs used by the pyrunc command-line tool (shim/ctl)
# and the CRI endpoint (shim/cri) only; so does the Kubernetes CRI API (protos/k8s/). Nothing
# else imports them, so the daemon never loads grpc. protoc writes imports relative to the proto root
# (`from containerd.types import mount_pb2`); they are rewritten to
# `from shim.api.containerd.types import mount_pb2`. Imports of modules that protoc did not
# generate here (google.protobuf.*, from the protobuf package) are left alone.
#
# The compiler is grpcio-tools' bundled protoc, at the exact version pinned in pyproject.toml
# (another protoc version writes different files, and --check would fail). The Python used
# is, in order: $PYTHON, the active virtualenv, the project venv
# /opt/containerd-shim-pyrunc/venv, python3 on PATH.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROJECT_VENV=/opt/containerd-shim-pyrunc/venv

usage() {
    echo "usage: $0 [--check]" >&2
    exit 2
}

check=0
case "${1-}" in
    "") ;;
    --check) check=1 ;;
    -h | --help) usage ;;
    *) usage ;;
esac
[[ $# -le 1 ]] || usage

if [[ -n "${PYTHON-}" ]]; then
    py=$PYTHON
elif [[ -n "${VIRTUAL_ENV-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then
    py=$VIRTUAL_ENV/bin/python
elif [[ -x "$PROJECT_VENV/bin/python" ]]; then
    py=$PROJECT_VENV/bin/python
else
    py=python3
fi

want=$(sed -n 's/.*"grpcio-tools==\([^"]*\)".*/\1/p' "$ROOT/pyproject.toml" | head -n1)
if [[ -z "$want" ]]; then
    echo "gen-protos: no grpcio-tools==VERSION pin found in pyproject.toml" >&2
    exit 2
fi
have=$("$py" -c 'from importlib.metadata import version; print(version("grpcio-tools"))' \
    2>/dev/null || true)
if [[ "$have" != "$want" ]]; then
    echo "gen-protos: $py has grpcio-tools ${have:-(not installed)}, need $want" >&2
    echo "gen-protos: install it with: $py -m pip install grpcio-tools==$want" >&2
    exit 2
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/gen-protos.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
out=$tmp/api

# generate OUTDIR: write the whole shim/api tree into OUTDIR.
generate() {
    local outdir=$1
    local -a protos
    mkdir -p "$outdir"
    mapfile -t protos < <(cd "$ROOT/protos" && find . -name '*.proto' -type f | sed 's|^\./||' |
        LC_ALL=C sort)
    if [[ ${#protos[@]} -eq 0 ]]; then
        echo "gen-protos: no .proto files under protos/" >&2
        exit 2
    fi
    # grpc_tools.protoc, run as a module, adds the include path of the well-known types
    # (google/protobuf/*.proto) by itself.
    (cd "$ROOT/protos" && "$py" -m grpc_tools.protoc -I. \
        --python_out="$outdir" --pyi_out="$outdir" "${protos[@]}")
    # grpc stubs: only for containerd's gRPC services and CRI (protoc writes a *_pb2_grpc.py for
    # every file it is given, services or not).
    local -a grpc_protos=()
    local p
    for p in "${protos[@]}"; do
        case $p in
            containerd/services/ttrpc/*) ;;
            containerd/services/*) grpc_protos+=("$p") ;;
            k8s/*) grpc_protos+=("$p") ;;
            pyrunc/migrate/*) grpc_protos+=("$p") ;;
        esac
    done
    if [[ ${#grpc_protos[@]} -gt 0 ]]; then
        (cd "$ROOT/protos" && "$py" -m grpc_tools.protoc -I. \
            --grpc_python_out="$outdir" "${grpc_protos[@]}")
    fi
    "$py" - "$outdir" <<'PYEOF'
"""Rewrite protoc's root-relative imports to shim.api.* and add __init__.py files."""

import pathlib
import re
import sys

PREFIX = "shim.api"
out = pathlib.Path(sys.argv[1])

generated = sorted(p for p in out.rglob("*_pb2.py"))
# Module names as protoc writes them, e.g. "containerd.types.mount_pb2".
ours = {".".join(p.relative_to(out).with_suffix("").parts) for p in generated}

IMPORT = re.compile(r"^from ([\w.]+) import (\w+_pb2) as ", re.MULTILINE)
PLAIN = re.compile(r"^import (\w+_pb2) as ", re.MULTILINE)
BUILD = re.compile(r"(_builder\.BuildTopDescriptorsAndMessages\(DESCRIPTOR, )'([\w.]+)'")


def from_import(m: re.Match[str]) -> str:
    if f"{m[1]}.{m[2]}" not in ours:
        return m[0]  # google.protobuf and anything else not generated here
    return f"from {PREFIX}.{m[1]} import {m[2]} as "


def plain_import(m: re.Match[str]) -> str:
    if m[1] not in ours:
        return m[0]
    return f"from {PREFIX} import {m[1]} as "


def build(m: re.Match[str]) -> str:
    if m[2] not in ours:
        raise SystemExit(f"gen-protos: unexpected module name {m[2]!r}")
    return f"{m[1]}'{PREFIX}.{m[2]}'"


for path in sorted([*out.rglob("*_pb2.py*"), *out.rglob("*_pb2_grpc.py")]):
    text = path.read_text()
    new = IMPORT.sub(from_import, text)
    new = PLAIN.sub(plain_import, new)
    if path.name.endswith("_pb2.py"):
        new, n = BUILD.subn(build, new)
        if n != 1:
            raise SystemExit(f"gen-protos: {path}: expected one BuildTopDescriptorsAndMessages")
    path.write_text(new)

dirs = {out} | {p.parent for p in out.rglob("*_pb2.py")}
for d in list(dirs):
    while d != out:
        d = d.parent
        dirs.add(d)
for d in sorted(dirs):
    init = d / "__init__.py"
    if d == out:
        init.write_text('"""Generated protobuf modules (hack/gen-protos.sh). Do not edit."""\n')
    else:
        init.write_text("")
PYEOF
}

generate "$out"

if [[ $check -eq 1 ]]; then
    if ! diff -r -x __pycache__ "$out" "$ROOT/shim/api" >"$tmp/diff" 2>&1; then
        cat "$tmp/diff" >&2
        echo "gen-protos: shim/api/ is out of date with protos/; run hack/gen-protos.sh" >&2
        exit 1
    fi
    echo "gen-protos: shim/api/ is up to date"
    exit 0
fi

rm -rf "$ROOT/shim/api"
cp -R "$out" "$ROOT/shim/api"
echo "gen-protos: wrote shim/api/ ($(find "$ROOT/shim/api" -name '*_pb2.py' | wc -l) modules," \
    "$(find "$ROOT/shim/api" -name '*_pb2_grpc.py' | wc -l) gRPC stubs)"
