#!/usr/bin/env bash
# Proves that hack/install.sh sets up a fresh machine by itself: builds a minimal Debian 12
# root file system (mmdebstrap --variant=minbase, with this machine's apt sources and
# /etc/apt/apt.conf.d settings, so the same package archive and settings are used), copies
# the checkout in, and in a chroot runs `hack/install.sh --chroot` (packages, CRIU build, venv,
# test image build), then checks that every program of hack/host-programs.txt resolves there
# and runs the unit tests there. A package that this machine has only because someone
# installed it by hand is missing in that root file system, and the check fails.
#
# What a chroot cannot show stays out (install.sh --chroot skips it): `criu check` ("mnt: No
# parent found for mountpoint"), starting containerd, the sysctl, importing the test image.
# The integration tests then run on the real machine.
#
# Usage: hack/fresh-check.sh [--keep]     (as root; --keep leaves the root file system and
#                                           prints where it is, for a look inside)
# Everything it mounts is unmounted and everything it made removed, also on failure.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly SUITE=bookworm
readonly WORK_PARENT=/var/tmp
readonly CHROOT_SRC=/src
readonly CHROOT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
readonly VENV_PY=/opt/containerd-shim-pyrunc/venv/bin/python

keep=0
case "${1:-}" in
    --keep) keep=1 ;;
    "") ;;
    *) echo "usage: $0 [--keep]" >&2; exit 2 ;;
esac

log() { printf '==> fresh-check: %s\n' "$*"; }
die() { printf 'fresh-check: error: %s\n' "$*" >&2; exit 1; }

[[ $EUID == 0 ]] || die "run as root"
command -v mmdebstrap >/dev/null || die "mmdebstrap is missing (hack/install.sh installs it)"

work=$(mktemp -d "$WORK_PARENT/pyrunc-fresh.XXXXXX")
root=$work/root
mounted=()

cleanup() {
    local rc=$? i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        umount -R "${mounted[i]}" 2>/dev/null || umount -R -l "${mounted[i]}" 2>/dev/null || true
    done
    # anything mounted below the root by what ran inside (none expected)
    awk -v r="$root/" 'index($2, r) == 1 {print $2}' /proc/self/mounts | sort -r \
        | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    if awk -v r="$root/" 'index($2, r) == 1 {f = 1} END {exit !f}' /proc/self/mounts; then
        echo "fresh-check: mounts remain under $root; not removing it" >&2
        exit 1
    fi
    if ((keep)); then
        echo "fresh-check: kept $root"
    else
        rm -rf --one-file-system "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# This machine's apt sources, less what install.sh itself adds (the chroot must add it too)
# and disabled entries.
sources=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [[ -f $f && -s $f ]] || continue
    [[ $(basename "$f") == containerd-shim-pyrunc-* ]] && continue
    grep -qE '^[[:space:]]*(deb|Types:)' "$f" || continue
    sources+=("$f")
done
((${#sources[@]})) || die "no apt sources found in /etc/apt"
aptopts=()
for f in /etc/apt/apt.conf.d/*; do
    [[ -f $f ]] && aptopts+=("--aptopt=$f")
done

log "mmdebstrap --variant=minbase $SUITE ($(printf '%s ' "${sources[@]}"))"
start=$SECONDS
# The keyring the sources name (Signed-By) must be inside too, for install.sh's apt-get update.
mmdebstrap --quiet --variant=minbase "${aptopts[@]}" \
    --include=debian-archive-keyring \
    "$SUITE" "$root" "${sources[@]}"
log "root file system: $((SECONDS - start)) s, $(du -sh --one-file-system "$root" | cut -f1)"

log "copying the checkout to $CHROOT_SRC"
mkdir -p "$root$CHROOT_SRC"
tar -C "$repo" --exclude-vcs --exclude=./build --exclude='__pycache__' --exclude='*.egg-info' \
    --exclude=.mypy_cache --exclude=.ruff_cache --exclude=.pytest_cache --exclude=.hypothesis \
    -cf - . | tar -C "$root$CHROOT_SRC" -xf -
cp /etc/resolv.conf "$root/etc/resolv.conf"
# How this machine reaches PyPI: pip's certificate bundle (a TLS-intercepting proxy's CA may be
# in it), as `pip config` or PIP_CERT name it. Like the apt settings, a setting of the machine,
# not of the project; the host's local wheel folders and indexes stay out.
pip_cert=${PIP_CERT:-$(sed -n 's/^[[:space:]]*cert[[:space:]]*=[[:space:]]*//p' \
    /etc/pip.conf 2>/dev/null | head -n1)}
pip_env=()
if [[ -n $pip_cert && -f $pip_cert ]]; then
    # at a path no package owns (ca-certificates, if installed inside, rewrites its own)
    mkdir -p "$root/etc/pyrunc-fresh-check"
    cp "$pip_cert" "$root/etc/pyrunc-fresh-check/pip-cert.pem"
    pip_env=("PIP_CERT=/etc/pyrunc-fresh-check/pip-cert.pem")
fi

bind() {  # bind SRC DEST-inside-root [mount args...]
    local dest=$root$2
    mkdir -p "$dest"
    mount "${@:3}" "$1" "$dest"
    mounted+=("$dest")
}
bind proc /proc -t proc
# /sys with the cgroup hierarchies (unit tests read their own process's cgroups); rslave, so
# nothing unmounted here propagates back to the host
bind /sys /sys --rbind
mount --make-rslave "$root/sys"
bind /dev /dev --bind
bind devpts /dev/pts -t devpts -o newinstance,ptmxmode=0666

in_root() {
    chroot "$root" /usr/bin/env -i HOME=/root PATH="$CHROOT_PATH" LANG=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive "${pip_env[@]}" "$@"
}

log "hack/install.sh --chroot (inside)"
start=$SECONDS
in_root bash "$CHROOT_SRC/hack/install.sh" --chroot
log "install.sh --chroot: $((SECONDS - start)) s"

log "every program of hack/host-programs.txt resolves"
missing=()
while read -r prog provider; do
    [[ -z $prog || $prog == \#* ]] && continue
    if ! in_root bash -c 'command -v "$1" >/dev/null' _ "$prog"; then
        missing+=("$prog ($provider)")
    fi
done <"$repo/hack/host-programs.txt"
if ((${#missing[@]})); then
    printf 'fresh-check: not found after install.sh in a fresh root file system:\n' >&2
    printf '  %s\n' "${missing[@]}" >&2
    exit 1
fi
log "all $(grep -cvE '^[[:space:]]*(#|$)' "$repo/hack/host-programs.txt") programs found"

log "unit tests (inside)"
in_root bash -c "cd $CHROOT_SRC && $VENV_PY -m pytest tests -q -p no:cacheprovider"
log "passed"
