#!/usr/bin/env bash
# Installs everything containerd-shim-pyrunc needs on a Debian 12 host, as root:
#   - Debian packages: containerd, runc, iptables, iproute2, busybox-static, a C toolchain,
#     python3-venv, and what `make criu` needs;
#   - CRIU >= 4.2.1 at /usr/local/sbin/criu, built from Debian unstable's source tarball
#     (bookworm's CRIU 3.17 fails on current kernels with "vdso: Unexpected rt vDSO area
#     bounds"; trixie's 4.1.1 cannot dump TCP sockets on Linux >= 6.16: "sockets: Can't get
#     1:16 opt: Operation not supported", fixed in CRIU 4.2);
#   - the project in a venv at /opt/containerd-shim-pyrunc/venv (editable install of this
#     checkout) and /usr/local/bin/containerd-shim-pyrunc-v2 pointing at its console script;
#   - a running containerd (started by hand when its socket does not answer: no systemd here);
#   - fs.pipe-max-size >= 4 MiB (CRIU lazy pages without CAP_SYS_RESOURCE);
#   - CRIU's cache of its kernel probes (criu.kdat) in /run/criu, a tmpfs (CRIU keeps the cache
#     only on a tmpfs; where /run is none, a 1 MiB tmpfs is mounted there);
#   - the test image localhost/pyrunc-test:latest (hack/image/build.sh), imported into
#     containerd's "default" namespace;
#   - the Kubernetes-side parts (hack/install-k8s.sh): containerd 2.1.9 in a private prefix,
#     checkpointctl, CNI plugins, the CRI API proto, the pause image.
# Idempotent: every step first checks whether it is already done, so a second run takes
# seconds and changes nothing. Needs no network but the package registries.
#
# Usage: hack/install.sh [--chroot]
#   --chroot   only what a chroot can do (hack/fresh-check.sh runs it in a fresh Debian root
#              file system): packages, the CRIU build, the venv and building the test image;
#              skips `criu check` (it needs a real mount tree: "mnt: No parent found for
#              mountpoint"), starting containerd, the sysctl and importing the image.
set -euo pipefail

readonly CRIU_MIN_VERSION=4.2.1
readonly CRIU_SUITE=sid
readonly CRIU_BIN=/usr/local/sbin/criu
# CRIU probes the kernel at every run (iptables, ip6tables, a shell: 60-100 ms here) unless it
# finds its cache, criu.kdat, which it writes only on a tmpfs. It is built to keep it in its
# own root-only directory, so a host whose /run is on a disk can still have one.
readonly CRIU_RUNDIR=/run/criu
readonly TMPFILES_FILE=/etc/tmpfiles.d/containerd-shim-pyrunc.conf
readonly CACHE_DIR=/var/cache/containerd-shim-pyrunc
readonly PREFIX=/opt/containerd-shim-pyrunc
readonly VENV=$PREFIX/venv
readonly CRIU_STAMP=$PREFIX/criu.build
readonly VENV_STAMP=$VENV/.containerd-shim-pyrunc-install
readonly SHIM_NAME=containerd-shim-pyrunc-v2
readonly SHIM_LINK=/usr/local/bin/$SHIM_NAME
readonly TOOL_LINK=/usr/local/bin/pyrunc
readonly CONTAINERD_SOCK=/run/containerd/containerd.sock
readonly CONTAINERD_LOG=/var/log/containerd.log
readonly IMAGE_REF=localhost/pyrunc-test:latest
readonly IMAGE_NS=default
readonly PIPE_MAX=4194304
readonly SYSCTL_FILE=/etc/sysctl.d/60-containerd-shim-pyrunc.conf
readonly CRIU_SRC_FILE=/etc/apt/sources.list.d/containerd-shim-pyrunc-$CRIU_SUITE-src.sources
readonly OLD_SRC_FILE=/etc/apt/sources.list.d/containerd-shim-pyrunc-trixie-src.sources

# Runtime and build packages.
# - `make criu` (CRIU 4.2.1): pkg-config, libprotobuf-c-dev, protobuf-c-compiler, libnl-3-dev,
#   libnet1-dev, libcap-dev, uuid-dev, and since 4.2 also protoc (protobuf-compiler) with
#   google/protobuf/descriptor.proto (libprotobuf-dev): its Makefile compiles
#   images/*.proto with protoc against the system's descriptor.proto.
# - optional CRIU features we want: libbsd-dev (setproctitle), libnftables-dev (nftables
#   network locking), libgnutls28-dev (TLS page server).
# - programs the shim, hooks, CLI and tests execute: hack/host-programs.txt lists each with
#   the package that provides it (tests/test_host_programs.py keeps that list complete), e.g.
#   nftables (nft), iptables, iproute2 (ip, bridge), util-linux (nsenter, unshare, setsid), mount.
# Left out: libaio-dev (CRIU's test suite), libdrm-dev (amdgpu plugin, not part of
# `make criu`), python3-protobuf (crit), asciidoc/xmlto (man pages; pull in TeX).
readonly PACKAGES=(
    containerd runc iptables nftables iproute2 busybox-static procps xz-utils util-linux mount
    gcc binutils make pkg-config python3-venv mmdebstrap openssl
    libprotobuf-c-dev protobuf-c-compiler protobuf-compiler libprotobuf-dev
    libnl-3-dev libnet1-dev libcap-dev uuid-dev
    libbsd-dev libnftables-dev libgnutls28-dev
)

export DEBIAN_FRONTEND=noninteractive
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
apt_updated=0
chroot_only=0
criu_check="(not run: --chroot)"
image_digest=""

log() { printf '==> %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

apt_update() {
    if [[ $apt_updated == 0 ]]; then
        log "apt-get update"
        apt-get update -qq
        apt_updated=1
    fi
}

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        if [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null) != installed ]]; then
            missing+=("$p")
        fi
    done
    if ((${#missing[@]} == 0)); then
        log "Debian packages: all present"
        return
    fi
    apt_update
    log "apt-get install ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# version_at_least A B: A >= B as Debian compares versions.
version_at_least() {
    dpkg --compare-versions "$1" ge "$2"
}

criu_installed_version() {
    [[ -x $CRIU_BIN ]] || return 1
    "$CRIU_BIN" --version 2>/dev/null | awk '$1 == "Version:" {print $2; exit}'
}

criu_is_wanted_version() {
    local v
    v=$(criu_installed_version) && [[ -n $v ]] && version_at_least "$v" "$CRIU_MIN_VERSION"
}

# What the installed CRIU was built with, beside its version (an earlier build kept its
# cache in /run: rebuilt once).
criu_build_stamp() {
    echo "rundir=$CRIU_RUNDIR"
}

criu_is_wanted_build() {
    criu_is_wanted_version && [[ $(cat "$CRIU_STAMP" 2>/dev/null) == "$(criu_build_stamp)" ]]
}

# The upstream version of the newest criu source package, if it is new enough.
criu_source_version() {
    local v
    v=$(apt-cache showsrc criu 2>/dev/null | awk '$1 == "Version:" {print $2}' \
        | sed 's/-[^-]*$//; s/^[0-9]*://' | sort -V | tail -n1)
    [[ -n $v ]] && version_at_least "$v" "$CRIU_MIN_VERSION" && echo "$v"
}

# The configured apt targets, as apt itself parses them (sources.list and deb822 .sources).
apt_targets() {
    apt-get indextargets --no-release-info --format '$(TARGET_OF) $(RELEASE) $(SITE)' | sort -u
}

# Adds a deb-src entry for $CRIU_SUITE main on the archive already configured for this
# release, unless one exists (source packages only: nothing from that suite is installed).
ensure_criu_sources() {
    local targets codename uri signed_by=""
    rm -f "$OLD_SRC_FILE"  # an earlier install's trixie entry (CRIU 4.1.1)
    targets=$(apt_targets)
    if awk -v s="$CRIU_SUITE" '$1 == "deb-src" && $2 == s {found = 1} END {exit !found}' \
        <<<"$targets"; then
        return
    fi
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [[ -n $codename ]] || die "cannot tell this Debian release's codename from /etc/os-release"
    uri=$(awk -v c="$codename" '$1 == "deb" && $2 == c {print $3; exit}' <<<"$targets")
    [[ -n $uri ]] || die "no apt source configured for '$codename'; cannot locate the Debian archive"
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
        signed_by=$(awk 'tolower($1) == "signed-by:" {print $2; exit}' \
            /etc/apt/sources.list.d/debian.sources)
    fi
    log "adding deb-src $CRIU_SUITE main from $uri ($CRIU_SRC_FILE)"
    {
        echo "Types: deb-src"
        echo "URIs: $uri"
        echo "Suites: $CRIU_SUITE"
        echo "Components: main"
        [[ -n $signed_by ]] && echo "Signed-By: $signed_by"
    } >"$CRIU_SRC_FILE"
    apt_updated=0
}

install_criu() {
    if criu_is_wanted_build; then
        log "CRIU $(criu_installed_version) (>= $CRIU_MIN_VERSION): already at $CRIU_BIN"
    else
        ensure_criu_sources
        local version
        if ! version=$(criu_source_version); then
            apt_updated=0
            apt_update
            version=$(criu_source_version) \
                || die "no criu >= $CRIU_MIN_VERSION source package in $CRIU_SUITE (apt-cache showsrc criu)"
        fi
        local build=$CACHE_DIR/criu tarball=criu_$version.orig.tar.xz
        mkdir -p "$build"
        if [[ ! -s $build/$tarball ]]; then
            log "apt-get source --tar-only criu/$CRIU_SUITE"
            # The orig tarball is served; the .dsc may not be (hence --tar-only).
            # (_apt cannot write to this root-owned folder: download as root, quietly.)
            (cd "$build" && apt-get source -qq -o APT::Sandbox::User=root --tar-only \
                "criu/$CRIU_SUITE")
        fi
        [[ -s $build/$tarball ]] || die "apt-get source did not fetch $tarball"
        log "building CRIU $version in $build"
        rm -rf "$build/criu-$version"
        tar -C "$build" -xf "$build/$tarball"
        make -C "$build/criu-$version" -j"$(nproc)" RUNDIR="$CRIU_RUNDIR" criu \
            >"$build/make.log" 2>&1 \
            || { tail -n 30 "$build/make.log" >&2; die "make criu failed (log: $build/make.log)"; }
        install -m0755 "$build/criu-$version/criu/criu" "$CRIU_BIN"
        criu_is_wanted_version || die "$CRIU_BIN --version does not report >= $CRIU_MIN_VERSION"
        mkdir -p "$(dirname "$CRIU_STAMP")"
        criu_build_stamp >"$CRIU_STAMP"
    fi
    ((chroot_only)) && return
    criu_check=$("$CRIU_BIN" check 2>&1 || true)
    grep -q "Looks good" <<<"$criu_check" \
        || die "'$CRIU_BIN check' failed:"$'\n'"$criu_check"
}

venv_wanted_stamp() {
    printf 'repo=%s\npyproject=%s\n' "$repo" "$(sha256sum <"$repo/pyproject.toml" | cut -d' ' -f1)"
}

venv_is_current() {
    [[ -x $VENV/bin/python && -f $VENV_STAMP ]] || return 1
    [[ $(cat "$VENV_STAMP") == "$(venv_wanted_stamp)" ]] || return 1
    # The venv must import the package from this checkout.
    local where
    where=$("$VENV/bin/python" -c 'import shim, os; print(os.path.dirname(shim.__file__))' \
        2>/dev/null) || return 1
    [[ $where == "$repo/shim" ]]
}

install_project() {
    if venv_is_current; then
        log "venv: $VENV is current (editable install of $repo)"
    else
        if [[ ! -x $VENV/bin/python ]]; then
            log "creating venv $VENV"
            mkdir -p "$PREFIX"
            /usr/bin/python3 -m venv "$VENV"
        fi
        log "pip install -e $repo[test,grpc,net]"
        rm -f "$VENV_STAMP"
        # pip 23 warns once per package about configured local index folders that lack it;
        # those lines are noise, everything else on stderr is passed through.
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
            --config-settings editable_mode=compat -e "$repo[test,grpc,net]" \
            2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
        venv_wanted_stamp >"$VENV_STAMP"
    fi
    # Bytecode for the package: containerd's environment may carry PYTHONDONTWRITEBYTECODE,
    # and without cached .pyc files every shim start would compile its modules again.
    "$VENV/bin/python" -m compileall -q "$repo/shim" >/dev/null
    local target=$VENV/bin/$SHIM_NAME
    [[ -e $target ]] || die "pip did not install the console script $target"
    # pip's console script imports re, and site runs the .pth files (~8 ms of CPU in every
    # shim start, on every container's critical path): the shim's own launcher runs without
    # site (-S) and puts the checkout and the venv's packages on sys.path itself.
    local purelib
    purelib=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
    printf '#!%s -S\nimport sys\nsys.path[:0] = [%s]\nsys.path.append(%s)\n%s\n%s\n' \
        "$VENV/bin/python" "'$repo'" "'$purelib'" "from shim.cli import main" \
        "sys.exit(main())" >"$target.new" && chmod 755 "$target.new" && mv -f "$target.new" "$target"
    if [[ $(readlink "$SHIM_LINK" 2>/dev/null || true) != "$target" ]]; then
        log "linking $SHIM_LINK -> $target"
        ln -sfn "$target" "$SHIM_LINK"
    fi
    # pyrunc: the command-line tool for every checkpoint/restore option (containerd's API).
    local tool=$VENV/bin/pyrunc
    [[ -e $tool ]] || die "pip did not install the console script $tool"
    if [[ $(readlink "$TOOL_LINK" 2>/dev/null || true) != "$tool" ]]; then
        log "linking $TOOL_LINK -> $tool"
        ln -sfn "$tool" "$TOOL_LINK"
    fi
}

containerd_answers() {
    # Without the socket ctr would wait for it; don't.
    [[ -S $CONTAINERD_SOCK ]] && timeout 5 ctr --address "$CONTAINERD_SOCK" version >/dev/null 2>&1
}

ensure_containerd() {
    if containerd_answers; then
        log "containerd: answering on $CONTAINERD_SOCK"
        return
    fi
    log "starting containerd (log: $CONTAINERD_LOG)"
    # /usr/local/sbin first: runc (and the shim) find CRIU through containerd's PATH
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH \
        setsid nohup containerd </dev/null >>"$CONTAINERD_LOG" 2>&1 &
    local i
    for ((i = 0; i < 60; i++)); do
        containerd_answers && return
        sleep 0.5
    done
    tail -n 20 "$CONTAINERD_LOG" >&2 || true
    die "containerd did not answer on $CONTAINERD_SOCK within 30 s"
}

# CRIU's lazy page server needs ~4 MiB pipes; root here lacks CAP_SYS_RESOURCE, so the limit
# itself must allow them (see the project docs on lazy migration).
ensure_pipe_max_size() {
    local cur line="fs.pipe-max-size = $PIPE_MAX"
    cur=$(sysctl -n fs.pipe-max-size)
    if ((cur < PIPE_MAX)); then
        log "sysctl fs.pipe-max-size=$PIPE_MAX (was $cur)"
        sysctl -q -w fs.pipe-max-size=$PIPE_MAX
    fi
    if [[ -d /etc/sysctl.d && $(cat "$SYSCTL_FILE" 2>/dev/null) != "$line" ]]; then
        echo "$line" >"$SYSCTL_FILE"   # kept across reboots
    fi
}

install_image() {
    bash "$repo/hack/image/build.sh"
    local want have
    want=$(cat "$repo/build/pyrunc-test-image.digest")
    image_digest=$want
    ((chroot_only)) && return
    have=$(ctr -n "$IMAGE_NS" image ls 2>/dev/null | awk -v r="$IMAGE_REF" '$1 == r {print $3}')
    if [[ $have == "$want" ]]; then
        log "image $IMAGE_REF ($want): already imported"
    else
        log "importing $IMAGE_REF into containerd namespace $IMAGE_NS"
        ctr -n "$IMAGE_NS" image import "$repo/build/pyrunc-test-image.tar" >/dev/null
    fi
}

# CRIU's kernel-probe cache directory: root's alone, and a tmpfs (a fresh one after each boot,
# so the cache never outlives the kernel it describes).
ensure_criu_rundir() {
    install -d -m 0700 -o root -g root "$CRIU_RUNDIR"
    # a host whose /run is a tmpfs loses the directory at boot: systemd-tmpfiles makes it again
    local line="d $CRIU_RUNDIR 0700 root root -"
    if [[ -d /etc/tmpfiles.d && $(cat "$TMPFILES_FILE" 2>/dev/null) != "$line" ]]; then
        echo "$line" >"$TMPFILES_FILE"
    fi
    if [[ $(stat -f -c %T "$CRIU_RUNDIR") != tmpfs ]]; then
        log "mounting a tmpfs on $CRIU_RUNDIR (CRIU keeps its kernel-probe cache only on a tmpfs)"
        mount -t tmpfs -o size=1m,mode=0700,nosuid,nodev,noexec criu-kdat "$CRIU_RUNDIR"
    fi
}

main() {
    case "${1:-}" in
        --chroot) chroot_only=1 ;;
        "") ;;
        *) die "usage: $0 [--chroot]" ;;
    esac
    [[ $EUID == 0 ]] || die "run as root"
    install_packages
    ((chroot_only)) || ensure_criu_rundir
    install_criu
    install_project
    if ((!chroot_only)); then
        ensure_containerd
        ensure_pipe_max_size
    fi
    install_image
    # containerd 2.1.9 (a second daemon for tests), checkpointctl, CNI plugins, the CRI API
    # proto and the pause image: what the CRI endpoint and its tests need
    bash "$repo/hack/install-k8s.sh"

    echo
    if ((chroot_only)); then
        echo "containerd-shim-pyrunc installed (--chroot: no criu check, containerd, sysctl or image import):"
    else
        echo "containerd-shim-pyrunc installed:"
    fi
    echo "  criu:        $CRIU_BIN ($("$CRIU_BIN" --version | head -n1)); criu check: $(tail -n1 <<<"$criu_check")"
    echo "  shim:        $SHIM_LINK -> $(readlink "$SHIM_LINK")"
    echo "  venv:        $VENV (editable: $repo)"
    if ((!chroot_only)); then
        echo "  containerd:  $CONTAINERD_SOCK ($(ctr version 2>/dev/null | awk '/Server:/{s=1} s && /Version:/{print $2; exit}'))"
        echo "  test image:  $IMAGE_REF $image_digest (namespace $IMAGE_NS)"
        echo "  fs.pipe-max-size: $(sysctl -n fs.pipe-max-size)"
    else
        echo "  test image:  built, $image_digest (not imported)"
    fi
}

main "$@"
