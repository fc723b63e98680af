#!/usr/bin/env bash
# Installs the Kubernetes-side parts the CRI endpoint (`pyrunc cri serve`) and its tests need,
# as root, beside what hack/install.sh installs. Nothing here replaces a system package:
#   - containerd 2.1.9 (Debian sid, containerd=2.1.9+ds1-5) and 1.7.24 (Debian trixie), each
#     unpacked with dpkg-deb -x into $PREFIX/containerd-<version> beside the system's
#     containerd 1.6 (tests run them as further daemons with their own config, root, state and
#     socket);
#   - checkpointctl 1.3.0 (Debian trixie), which needs glibc >= 2.38: trixie's libc6 is unpacked
#     next to it and the wrapper /usr/local/bin/checkpointctl runs it through trixie's loader;
#   - the CNI plugins (Debian's containernetworking-plugins, /usr/lib/cni) for bridge pods;
#   - the CRI API proto (k8s.io/cri-api 0.36.4, Debian sid's golang-k8s-cri-api-dev), unpacked
#     into $PREFIX/cri-api-0.36.4 and compared with the copy committed under protos/k8s/;
#   - a registry server (Debian bookworm's docker-registry, the distribution registry), unpacked
#     with dpkg-deb -x into $PREFIX/docker-registry and linked as /usr/local/bin/docker-registry
#     (no service is installed or started): the
#     restore tests serve the base image from it on 127.0.0.1, as containerd 2.1's own CRI
#     restore pulls it;
#   - the pause image localhost/pyrunc-pause:latest (hack/image/build-pause.sh), built here and
#     imported by the tests into the containerd instances they start.
# Packages of other suites are fetched with `apt-get download` through a private apt state (its
# own sources list, lists and cache in a temporary directory): the system's apt configuration is
# never touched. Downloaded .debs are kept in $CACHE_DIR, so a second run needs no network.
# Idempotent: each step checks first and is skipped when done. Verifies that every piece runs.
set -euo pipefail

readonly PREFIX=/opt/containerd-shim-pyrunc
readonly CACHE_DIR=/var/cache/containerd-shim-pyrunc/k8s
readonly DEFAULT_MIRROR=http://deb.debian.org/debian
readonly KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

readonly CONTAINERD_VERSION=2.1.9
readonly CONTAINERD_DEB_VERSION=2.1.9+ds1-5
readonly CONTAINERD_PREFIX=$PREFIX/containerd-$CONTAINERD_VERSION
readonly CONTAINERD17_VERSION=1.7.24
readonly CONTAINERD17_SUITE=trixie
readonly CONTAINERD17_PREFIX=$PREFIX/containerd-$CONTAINERD17_VERSION

readonly CHECKPOINTCTL_VERSION=1.3.0
readonly CHECKPOINTCTL_PREFIX=$PREFIX/checkpointctl-$CHECKPOINTCTL_VERSION
readonly CHECKPOINTCTL_LINK=/usr/local/bin/checkpointctl

readonly CRI_API_VERSION=0.36.4
readonly CRI_API_PREFIX=$PREFIX/cri-api-$CRI_API_VERSION
readonly CRI_PROTO_IN_DEB=usr/share/gocode/src/k8s.io/cri-api/pkg/apis/runtime/v1/api.proto
readonly CRI_PROTO_IN_REPO=protos/k8s/cri/runtime/v1/api.proto

readonly CNI_PACKAGE=containernetworking-plugins
readonly REGISTRY_PACKAGE=docker-registry
readonly REGISTRY_PREFIX=$PREFIX/docker-registry
readonly REGISTRY_LINK=/usr/local/bin/docker-registry
readonly CNI_DIR=/usr/lib/cni

export DEBIAN_FRONTEND=noninteractive
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
apt_state=""
fetched=""
version=""
containerd_version=""

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'install-k8s.sh: error: %s\n' "$*" >&2; exit 1; }

cleanup() {
    if [[ -n $apt_state ]]; then rm -rf "$apt_state"; fi
}
trap cleanup EXIT

# The Debian archive this machine's apt uses for its own release (the same mirror for the
# other suites), else deb.debian.org.
debian_mirror() {
    local codename uri
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    uri=$(apt-get indextargets --no-release-info --format '$(TARGET_OF) $(RELEASE) $(SITE)' \
        2>/dev/null | awk -v c="$codename" '$1 == "deb" && $2 == c {print $3; exit}')
    echo "${uri:-$DEFAULT_MIRROR}"
}

# A private apt state for sid and trixie (binary indexes only), made on first use.
private_apt() {
    local arch mirror
    if [[ -z $apt_state ]]; then
        apt_state=$(mktemp -d /var/tmp/pyrunc-k8s-apt.XXXXXX)
        arch=$(dpkg --print-architecture)
        mirror=$(debian_mirror)
        mkdir -p "$apt_state/lists/partial" "$apt_state/cache/archives/partial" \
            "$apt_state/sources.list.d" "$apt_state/preferences.d"
        {
            echo "deb [arch=$arch signed-by=$KEYRING] $mirror sid main"
            echo "deb [arch=$arch signed-by=$KEYRING] $mirror trixie main"
        } >"$apt_state/sources.list"
        log "apt-get update (private state: sid, trixie)"
        apt_private apt-get update -qq
    fi
}

# apt_private apt-get|apt-cache ARGS...: the command with the private state's options.
apt_private() {
    local cmd=$1
    shift
    "$cmd" \
        -o Dir::Etc::SourceList="$apt_state/sources.list" \
        -o Dir::Etc::SourceParts="$apt_state/sources.list.d" \
        -o Dir::Etc::Preferences=/dev/null \
        -o Dir::Etc::PreferencesParts="$apt_state/preferences.d" \
        -o Dir::State::Lists="$apt_state/lists" \
        -o Dir::Cache="$apt_state/cache" \
        -o APT::Get::List-Cleanup=false \
        -o APT::Sandbox::User=root \
        "$@"
}

# fetch PACKAGE VERSION: sets $fetched to the path of PACKAGE_VERSION_*.deb in $CACHE_DIR,
# downloading it through the private apt state when it is not there yet. (Functions that use
# the private state set globals instead of printing: a $(...) subshell would make its own.)
fetch() {
    local pkg=$1 version=$2 deb
    mkdir -p "$CACHE_DIR"
    deb=$(find "$CACHE_DIR" -maxdepth 1 -name "${pkg}_${version//:/%3a}_*.deb" | head -n1)
    if [[ -z $deb ]]; then
        private_apt
        log "apt-get download $pkg=$version"
        (cd "$CACHE_DIR" && apt_private apt-get download -qq "$pkg=$version" >&2) \
            || die "cannot download $pkg=$version from Debian (sid/trixie)"
        deb=$(find "$CACHE_DIR" -maxdepth 1 -name "${pkg}_${version//:/%3a}_*.deb" | head -n1)
        [[ -n $deb ]] || die "apt-get download $pkg=$version left no .deb in $CACHE_DIR"
    fi
    fetched=$deb
}

# suite_version PACKAGE SUITE: sets $version to the version of PACKAGE in SUITE ("" if none).
suite_version() {
    local pkg=$1 suite=$2
    private_apt
    version=$(apt_private apt-cache madison "$pkg" 2>/dev/null \
        | awk -F' [|] ' -v s=" $suite/" 'index($3, s) {gsub(/ /, "", $2); print $2; exit}')
}

# unpack DEB DIR: dpkg-deb -x DEB into DIR (made fresh), via a temporary sibling.
unpack() {
    local deb=$1 dir=$2 tmp
    tmp=$(mktemp -d "$(dirname "$dir")/.unpack.XXXXXX")
    dpkg-deb -x "$deb" "$tmp"
    rm -rf "$dir"
    mv "$tmp" "$dir"
}

# install_containerd VERSION DEB_VERSION PREFIX: unpack Debian's containerd DEB_VERSION into
# PREFIX (unless a containerd VERSION is there) and check that it runs; sets $containerd_version.
install_containerd() {
    local version=$1 deb_version=$2 prefix=$3 bin=$3/usr/bin/containerd v deb
    if [[ -x $bin ]] && v=$("$bin" --version 2>/dev/null) && [[ $v == *" $version"[+~\ ]* ]]; then
        log "containerd $version: already in $prefix"
    else
        fetch containerd "$deb_version"
        deb=$fetched
        log "unpacking $(basename "$deb") into $prefix"
        mkdir -p "$PREFIX"
        unpack "$deb" "$prefix"
    fi
    v=$("$bin" --version) || die "$bin does not run"
    [[ $v == *" $version"[+~\ ]* ]] || die "$bin reports '$v', expected $version"
    [[ -x $prefix/usr/bin/containerd-shim-runc-v2 ]] || die "$prefix has no containerd-shim-runc-v2"
    containerd_version=$v
}

install_containerd2() {
    install_containerd "$CONTAINERD_VERSION" "$CONTAINERD_DEB_VERSION" "$CONTAINERD_PREFIX"
    containerd2_version=$containerd_version
}

# containerd 1.7 (its CRI answers CheckpointContainer "not implemented"): trixie's package.
install_containerd17() {
    if [[ ! -x $CONTAINERD17_PREFIX/usr/bin/containerd ]]; then
        suite_version containerd "$CONTAINERD17_SUITE"
        case $version in
            "$CONTAINERD17_VERSION"[~+-]*) ;;
            *) die "$CONTAINERD17_SUITE has containerd '${version:-none}', expected $CONTAINERD17_VERSION" ;;
        esac
    else
        version=unused
    fi
    install_containerd "$CONTAINERD17_VERSION" "$version" "$CONTAINERD17_PREFIX"
    containerd17_version=$containerd_version
}

# The wrapper: checkpointctl 1.3.0 is linked against glibc 2.38+, bookworm has 2.36; run it
# through trixie's dynamic loader with trixie's libc (nothing else of trixie is used).
write_checkpointctl_wrapper() {
    local wrapper=$CHECKPOINTCTL_PREFIX/checkpointctl
    cat >"$wrapper.tmp" <<EOF
#!/bin/sh
# checkpointctl $CHECKPOINTCTL_VERSION (Debian trixie) through trixie's loader and libc
# (written by hack/install-k8s.sh of containerd-shim-pyrunc).
L=$CHECKPOINTCTL_PREFIX/libc/usr/lib/x86_64-linux-gnu
exec "\$L/ld-linux-x86-64.so.2" --library-path "\$L" --argv0 checkpointctl \\
    $CHECKPOINTCTL_PREFIX/pkg/usr/bin/checkpointctl "\$@"
EOF
    chmod 0755 "$wrapper.tmp"
    mv "$wrapper.tmp" "$wrapper"
}

install_checkpointctl() {
    local arch deb
    arch=$(dpkg --print-architecture)
    [[ $arch == amd64 ]] || die "checkpointctl through trixie's loader is set up for amd64 only"
    if [[ -x $CHECKPOINTCTL_PREFIX/pkg/usr/bin/checkpointctl \
        && -e $CHECKPOINTCTL_PREFIX/libc/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 ]]; then
        log "checkpointctl $CHECKPOINTCTL_VERSION: already in $CHECKPOINTCTL_PREFIX"
    else
        mkdir -p "$CHECKPOINTCTL_PREFIX"
        suite_version checkpointctl trixie
        [[ -n $version ]] || die "no checkpointctl in trixie"
        fetch checkpointctl "$version"
        deb=$fetched
        case $(dpkg-deb -f "$deb" Version) in
            "$CHECKPOINTCTL_VERSION"[+-]*) ;;
            *) die "$(basename "$deb") is not checkpointctl $CHECKPOINTCTL_VERSION" ;;
        esac
        log "unpacking $(basename "$deb") into $CHECKPOINTCTL_PREFIX/pkg"
        unpack "$deb" "$CHECKPOINTCTL_PREFIX/pkg"
        suite_version libc6 trixie
        [[ -n $version ]] || die "no libc6 in trixie"
        fetch libc6 "$version"
        deb=$fetched
        log "unpacking $(basename "$deb") into $CHECKPOINTCTL_PREFIX/libc"
        unpack "$deb" "$CHECKPOINTCTL_PREFIX/libc"
    fi
    write_checkpointctl_wrapper
    if [[ -e $CHECKPOINTCTL_LINK && ! -L $CHECKPOINTCTL_LINK ]]; then
        die "$CHECKPOINTCTL_LINK exists and is not our link; remove it or move it away"
    fi
    ln -sfn "$CHECKPOINTCTL_PREFIX/checkpointctl" "$CHECKPOINTCTL_LINK"
    "$CHECKPOINTCTL_LINK" --help >/dev/null || die "$CHECKPOINTCTL_LINK --help fails"
    checkpointctl_version=$CHECKPOINTCTL_VERSION
}

install_cni() {
    if [[ $(dpkg-query -W -f='${db:Status-Status}' "$CNI_PACKAGE" 2>/dev/null) == installed ]]; then
        log "$CNI_PACKAGE: installed"
    else
        log "apt-get install $CNI_PACKAGE"
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "$CNI_PACKAGE"
    fi
    local p
    for p in bridge host-local loopback portmap; do
        [[ -x $CNI_DIR/$p ]] || die "CNI plugin $CNI_DIR/$p is missing"
    done
    cni_version=$(dpkg-query -W -f='${Version}' "$CNI_PACKAGE")
}

install_registry() {
    local bin=$REGISTRY_PREFIX/usr/bin/docker-registry deb
    if [[ ! -x $bin ]]; then
        mkdir -p "$CACHE_DIR"
        deb=$(find "$CACHE_DIR" -maxdepth 1 -name "${REGISTRY_PACKAGE}_*.deb" | head -n1)
        if [[ -z $deb ]]; then
            log "apt-get download $REGISTRY_PACKAGE (this system's suite)"
            (cd "$CACHE_DIR" && apt-get download -qq "$REGISTRY_PACKAGE" >&2) \
                || die "cannot download $REGISTRY_PACKAGE"
            deb=$(find "$CACHE_DIR" -maxdepth 1 -name "${REGISTRY_PACKAGE}_*.deb" | head -n1)
        fi
        log "unpacking $(basename "$deb") into $REGISTRY_PREFIX"
        unpack "$deb" "$REGISTRY_PREFIX"
    else
        log "$REGISTRY_PACKAGE: already in $REGISTRY_PREFIX"
    fi
    ln -sfn "$bin" "$REGISTRY_LINK"
    registry_version=$("$REGISTRY_LINK" --version 2>&1 | awk '{print $NF; exit}')
    [[ -n $registry_version ]] || die "$REGISTRY_LINK --version fails"
}

install_cri_proto() {
    local proto=$CRI_API_PREFIX/$CRI_PROTO_IN_DEB deb
    if [[ ! -f $proto ]]; then
        suite_version golang-k8s-cri-api-dev sid
        case $version in
            "$CRI_API_VERSION"[+-]*) ;;
            *) die "sid has golang-k8s-cri-api-dev '${version:-none}', expected $CRI_API_VERSION" ;;
        esac
        fetch golang-k8s-cri-api-dev "$version"
        deb=$fetched
        log "unpacking $(basename "$deb") into $CRI_API_PREFIX"
        mkdir -p "$PREFIX"
        unpack "$deb" "$CRI_API_PREFIX"
    else
        log "CRI API proto $CRI_API_VERSION: already in $CRI_API_PREFIX"
    fi
    if ! cmp -s "$proto" "$repo/$CRI_PROTO_IN_REPO"; then
        die "$repo/$CRI_PROTO_IN_REPO differs from $proto (copy it, then run hack/gen-protos.sh)"
    fi
}

main() {
    [[ $EUID == 0 ]] || die "run as root"
    install_containerd2
    install_containerd17
    install_checkpointctl
    install_cni
    install_registry
    install_cri_proto
    bash "$repo/hack/image/build-pause.sh"

    echo
    echo "Kubernetes parts installed:"
    echo "  containerd:    $CONTAINERD_PREFIX/usr/bin/containerd ($containerd2_version)"
    echo "  containerd:    $CONTAINERD17_PREFIX/usr/bin/containerd ($containerd17_version)"
    echo "  checkpointctl: $CHECKPOINTCTL_LINK -> $CHECKPOINTCTL_PREFIX ($checkpointctl_version)"
    echo "  CNI plugins:   $CNI_DIR ($CNI_PACKAGE $cni_version)"
    echo "  registry:      $REGISTRY_LINK -> $REGISTRY_PREFIX ($registry_version)"
    echo "  CRI API:       $CRI_PROTO_IN_REPO = $CRI_API_PREFIX/$CRI_PROTO_IN_DEB"
    echo "  pause image:   $(cat "$repo/build/pyrunc-pause-image.ref") ($repo/build/pyrunc-pause-image.tar)"
}

main "$@"
