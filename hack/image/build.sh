#!/usr/bin/env bash
# Builds the test image, an OCI image archive, without docker:
#   build/pyrunc-test-image.tar         (ref localhost/pyrunc-test:latest, linux/amd64)
#   build/pyrunc-test-image.digest      its manifest digest (what `ctr image ls` shows)
#   build/pyrunc-test-image.inputs      hash of everything it was built from
# The static C programs in this folder are compiled with `gcc -static -O2` into
# /usr/bin of a rootfs next to busybox-static (/bin/busybox plus a symlink in
# /bin per applet); mkoci.py tars that rootfs as the single layer and wraps it.
# Nothing is rebuilt when the inputs hash is unchanged (pass --force to rebuild).
# Output dir: $PYRUNC_BUILD_DIR, default <repo>/build.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out_dir=${PYRUNC_BUILD_DIR:-$repo/build}
out=$out_dir/pyrunc-test-image.tar
ref=localhost/pyrunc-test:latest
busybox=/bin/busybox
python=/usr/bin/python3
programs=(counter memfill exitcode opt-tcp opt-unix opt-flock net-seq opt-dirty)

force=0
case "${1:-}" in
    --force) force=1 ;;
    "") ;;
    *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

for tool in gcc "$busybox" "$python"; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool not found (run hack/install.sh)" >&2; exit 1; }
done

inputs_hash() {
    (
        cd "$here"
        for f in $(ls -1 | LC_ALL=C sort); do
            [[ -f $f ]] && { echo "== $f"; cat "$f"; }
        done
        echo "== ref $ref"
        echo "== busybox"; sha256sum <"$busybox"
        echo "== gcc"; gcc --version | head -n1
    ) | sha256sum | cut -d' ' -f1
}

mkdir -p "$out_dir"
hash=$(inputs_hash)
if [[ $force == 0 && -f $out && -f $out_dir/pyrunc-test-image.digest \
      && "$(cat "$out_dir/pyrunc-test-image.inputs" 2>/dev/null)" == "$hash" ]]; then
    echo "test image up to date: $out ($(cat "$out_dir/pyrunc-test-image.digest"))"
    exit 0
fi

work=$(mktemp -d "$out_dir/.image.XXXXXX")
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,var/tmp,proc,sys,dev,run}
chmod 1777 "$rootfs/tmp" "$rootfs/var/tmp"

for p in "${programs[@]}"; do
    gcc -static -O2 -Wall -Wextra -Werror -o "$rootfs/usr/bin/$p" "$here/$p.c"
done
strip "$rootfs"/usr/bin/* 2>/dev/null || true

install -m0755 "$busybox" "$rootfs/bin/busybox"
for applet in $("$busybox" --list); do
    [[ $applet == busybox ]] && continue
    ln -sf busybox "$rootfs/bin/$applet"
done

# Accounts: root, and those containerd's integration/client suite (hack/conformance.sh)
# looks up by name or id in its busybox image: sys (3:3, TestContainerUserID) and
# www-data (33:33, TestContainerUser, TestContainerUsername); nobody/nogroup as usual.
cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
sys:x:3:3:sys:/dev:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
sys:x:3:
www-data:x:33:
nogroup:x:65534:
EOF

digest=$("$python" "$here/mkoci.py" --rootfs "$rootfs" --ref "$ref" --out "$out" \
    --cmd /bin/sh \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
echo "$digest" >"$out_dir/pyrunc-test-image.digest"
echo "$hash" >"$out_dir/pyrunc-test-image.inputs"
echo "built test image: $out ($ref, $digest)"
