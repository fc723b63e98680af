#!/usr/bin/env bash
# Builds the pause image the CRI tests give containerd as its sandbox (pod infrastructure)
# image, an OCI image archive, without docker and without a registry:
#   build/pyrunc-pause-image.tar      (ref localhost/pyrunc-pause:latest, linux/amd64)
#   build/pyrunc-pause-image.ref      that reference
#   build/pyrunc-pause-image.digest   its manifest digest
#   build/pyrunc-pause-image.inputs   hash of what it was built from
# The rootfs holds one file, /pause (hack/image/pause.c, `gcc -static`), which is also the
# command; mkoci.py writes the image. Nothing is rebuilt when the
# inputs are unchanged (pass --force to rebuild). Output dir: $PYRUNC_BUILD_DIR, default
# <repo>/build. Tests import the archive into each containerd they start
# (`ctr -n k8s.io image import`) and set it as that containerd's sandbox image.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out_dir=${PYRUNC_BUILD_DIR:-$repo/build}
out=$out_dir/pyrunc-pause-image.tar
ref=localhost/pyrunc-pause:latest
python=/usr/bin/python3

force=0
case "${1:-}" in
    --force) force=1 ;;
    "") ;;
    *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

for tool in gcc "$python"; do
    command -v "$tool" >/dev/null || { echo "build-pause.sh: $tool not found (run hack/install.sh)" >&2; exit 1; }
done

inputs_hash() {
    {
        echo "== pause.c"; cat "$here/pause.c"
        echo "== build-pause.sh"; cat "$here/build-pause.sh"
        echo "== mkoci.py"; cat "$here/mkoci.py"
        echo "== ref $ref"
        echo "== gcc"; gcc --version | head -n1
    } | sha256sum | cut -d' ' -f1
}

mkdir -p "$out_dir"
hash=$(inputs_hash)
if [[ $force == 0 && -f $out && -f $out_dir/pyrunc-pause-image.digest \
      && "$(cat "$out_dir/pyrunc-pause-image.inputs" 2>/dev/null)" == "$hash" ]]; then
    echo "pause image up to date: $out ($(cat "$out_dir/pyrunc-pause-image.digest"))"
    exit 0
fi

work=$(mktemp -d "$out_dir/.pause.XXXXXX")
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
mkdir -p "$rootfs"
gcc -static -O2 -Wall -Wextra -Werror -o "$rootfs/pause" "$here/pause.c"
strip "$rootfs/pause"
"$rootfs/pause" --version >/dev/null

# A CRI sandbox runs the image's Cmd when it has no Entrypoint: Cmd ["/pause"].
digest=$("$python" "$here/mkoci.py" --rootfs "$rootfs" --ref "$ref" --out "$out" \
    --cmd /pause --env PATH=/)
echo "$ref" >"$out_dir/pyrunc-pause-image.ref"
echo "$digest" >"$out_dir/pyrunc-pause-image.digest"
echo "$hash" >"$out_dir/pyrunc-pause-image.inputs"
echo "built pause image: $out ($ref, $digest)"
