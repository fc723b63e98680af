#!/usr/bin/env bash
# containerd's own integration suite against our shim: runs containerd 1.6.20's
# integration/client tests once per runtime and prints the results side by side.
#
#   hack/conformance.sh [RUNTIME...]     default: io.containerd.runc.v2 io.containerd.pyrunc.v2
#
# The first runtime is the reference. The script exits 1 when a test that passes with the
# reference does not pass with another runtime, or when a shim of another runtime (or any of
# its containers) outlives the suite; such processes are reported and killed either way.
#
# What it does:
#  1. Build (cached in $CACHE, rebuilt when a package or an edit changes): the suite's test
#     binary from Debian's packages, in GOPATH mode (GO111MODULE=off, GOPATH over
#     /usr/share/gocode): golang-go (1.19), golang-github-containerd-containerd-dev
#     (containerd's Go source; its dependencies bring every library the suite imports) and
#     golang-github-gotestyourself-gotest.tools-dev. The -dev package leaves integration/ out;
#     that directory comes from Debian's containerd_<version>.orig.tar.xz, fetched with
#     `apt-get source --tar-only` through a private apt state (one deb-src line for this
#     release under $CACHE, removed afterwards; the system's apt sources stay as they are).
#     hack/conformance/edit-suite.py makes the suite's only edits, each needed to run here
#     (hack/conformance/README.md lists them): its containerd's root, state and socket in a
#     per-run directory, CRI disabled in its config, and its seed image
#     ghcr.io/containerd/busybox:1.32 imported from the project's test image instead of pulled
#     (no registry here); hack/conformance/local_test.go holds the helpers they call.
#  2. Run, once per runtime: the suite's own TestMain starts a private containerd (the
#     system's /usr/bin/containerd with its own root, state and socket under $CACHE/run.*,
#     CRI disabled) and TEST_RUNTIME selects the runtime. Everything runs in a PID and mount
#     namespace of its own with a private /run (hack/conformance/in-namespace.sh, its process
#     1): the suite's kill tests look for "sleep 1" in `ps ax`, which must not see the host's
#     processes; runc's state and the shims' sockets stay the suite's; and whatever process
#     the suite leaves behind is reported and killed there. Tests listed in
#     hack/conformance/excluded.txt are left out, each with its measured reason.
#  3. A test still running when the run's timeout ends it is a HANG; the tests that had no
#     result yet then run again without it. A test that passes with the reference but not
#     with another runtime runs once more for that runtime, alone (PYRUNC_CONFORMANCE_RETRY=0:
#     not); only a second failure counts. The table shows both results ("FAIL>PASS").
#  4. Report: one line per test with each runtime's result (PASS, FAIL, SKIP, HANG; "-":
#     none), the leftover processes, the verdict. Logs, results and the table
#     (results.txt) go to $PYRUNC_BUILD_DIR/conformance (default <repo>/build/conformance).
#
# Environment:
#   PYRUNC_CONFORMANCE_TESTS    space-separated test names: run only these
#   PYRUNC_CONFORMANCE_TIMEOUT  seconds per runtime (default 180; the whole suite takes ~80);
#                               a test run again alone gets 90
#   PYRUNC_CONFORMANCE_RETRY    0: no second run of failing tests
#   PYRUNC_BUILD_DIR            where the test image is and the results go (default <repo>/build)
# Needs root, hack/install.sh done (containerd 1.6.20, runc, CRIU, the shim) and the package
# registries for a first run, which installs ~115 Debian packages and builds the suite.
set -euo pipefail

readonly CACHE=/var/cache/containerd-shim-pyrunc/conformance
readonly SUITE_PKG=github.com/containerd/containerd/integration/client
readonly DEV_PACKAGE=golang-github-containerd-containerd-dev
readonly PACKAGES=(
    golang-go "$DEV_PACKAGE" golang-github-gotestyourself-gotest.tools-dev
    containerd runc procps util-linux xz-utils python3
)
readonly TEST_NAMESPACE=testing   # the containerd namespace the suite uses
readonly DEFAULT_RUNTIMES=(io.containerd.runc.v2 io.containerd.pyrunc.v2)

export DEBIAN_FRONTEND=noninteractive
# CRIU is in /usr/local/sbin, the shim in /usr/local/bin: first, as for the system containerd.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
conf=$here/conformance
out_dir=${PYRUNC_BUILD_DIR:-$repo/build}
results_dir=$out_dir/conformance
test_binary=$CACHE/client.test
timeout_s=${PYRUNC_CONFORMANCE_TIMEOUT:-180}
retry_timeout_s=90

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'conformance.sh: error: %s\n' "$*" >&2; exit 2; }

installed() { [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]; }

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        installed "$p" || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return
    log "apt-get install ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The upstream part of a Debian version: 1.6.20~ds1-1+deb12u3 -> 1.6.20~ds1.
upstream_version() { sed 's/^[0-9]*://; s/-[^-]*$//' <<<"$1"; }

# Fetches Debian's orig tarball of containerd (the -dev package's version) into $CACHE/src
# and prints its path. A private apt state with one deb-src line for this release: the
# system's sources and lists stay as they are, and the state is removed afterwards.
fetch_orig_tarball() {
    local version=$1 tarball=$CACHE/src/containerd_$1.orig.tar.xz
    if [[ -s $tarball ]]; then
        echo "$tarball"
        return
    fi
    local codename uri state=$CACHE/apt
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [[ -n $codename ]] || die "cannot tell this Debian release's codename from /etc/os-release"
    uri=$(apt-get indextargets --no-release-info --format '$(TARGET_OF) $(RELEASE) $(SITE)' \
        | awk -v c="$codename" '$1 == "deb" && $2 == c {print $3; exit}')
    [[ -n $uri ]] || die "no apt source configured for '$codename'; cannot locate the Debian archive"
    rm -rf "$state"
    mkdir -p "$state/lists/partial" "$state/cache/archives/partial" "$state/parts" "$CACHE/src"
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri $codename main" \
        >"$state/sources.list"
    local apt_opts=(
        -o "Dir::Etc::SourceList=$state/sources.list" -o "Dir::Etc::SourceParts=$state/parts"
        -o "Dir::State::Lists=$state/lists" -o "Dir::Cache=$state/cache"
        -o APT::Sandbox::User=root   # _apt cannot write to this root-owned folder
    )
    log "apt-get source --tar-only containerd/$codename (private apt state, deb-src $codename)"
    apt-get "${apt_opts[@]}" update -qq
    (cd "$CACHE/src" && apt-get "${apt_opts[@]}" source -qq --tar-only "containerd/$codename")
    rm -rf "$state"
    [[ -s $tarball ]] || die "apt-get source did not fetch $(basename "$tarball") (is $codename's containerd at $version?)"
    echo "$tarball"
}

build_key() {
    {
        echo "dev $(dpkg-query -W -f='${Version}' "$DEV_PACKAGE")"
        echo "go $(dpkg-query -W -f='${Version}' golang-go)"
        echo "gotest.tools $(dpkg-query -W -f='${Version}' golang-github-gotestyourself-gotest.tools-dev)"
        sha256sum "$conf/edit-suite.py" "$conf/local_test.go" | cut -d' ' -f1
    } | sha256sum | cut -d' ' -f1
}

build_suite() {
    local key dev_version upstream tarball gopath src
    key=$(build_key)
    if [[ -x $test_binary && $(cat "$CACHE/client.test.key" 2>/dev/null) == "$key" ]]; then
        log "suite: $test_binary is current"
        return
    fi
    dev_version=$(dpkg-query -W -f='${Version}' "$DEV_PACKAGE")
    upstream=$(upstream_version "$dev_version")
    tarball=$(fetch_orig_tarball "$upstream")
    log "building $SUITE_PKG ($DEV_PACKAGE $dev_version + integration/ of $(basename "$tarball"))"
    gopath=$CACHE/gopath
    src=$gopath/src/github.com/containerd/containerd
    rm -rf "$gopath"
    mkdir -p "$(dirname "$src")"
    # A copy of the -dev tree (a GOPATH entry must hold the whole package tree: the first
    # one with github.com/containerd/containerd wins), plus integration/ from the tarball.
    cp -a /usr/share/gocode/src/github.com/containerd/containerd "$src"
    tar -C "$src" -xJf "$tarball" --strip-components=1 --wildcards '*/integration/'
    python3 "$conf/edit-suite.py" "$src/integration/client"
    install -m0644 "$conf/local_test.go" "$src/integration/client/zz_conformance_local_test.go"
    (
        cd "$src/integration/client"
        GO111MODULE=off GOPATH=$gopath:/usr/share/gocode GOCACHE=$CACHE/gocache GOFLAGS= \
            go test -c -o "$test_binary.new" .
    ) || die "go test -c failed"
    mv "$test_binary.new" "$test_binary"
    echo "$key" >"$CACHE/client.test.key"
}

# Every test of the suite (-test.short: TestMain only lists, starts nothing).
suite_tests() {
    PYRUNC_CONFORMANCE_DIR=/nonexistent PYRUNC_CONFORMANCE_IMAGE=/nonexistent \
        "$test_binary" -test.short -test.list '^Test' | sort
}

excluded_tests() { awk '!/^#/ && NF {print $1}' "$conf/excluded.txt" | sort; }

# Runs the suite against one runtime: run_suite RUNTIME NAME REGEX TIMEOUT writes
# $results_dir/NAME.{log,results,leftovers}.
run_suite() {
    local runtime=$1 name=$2 regex=$3 limit=$4 work tmp
    local log_file=$results_dir/$name.log
    work=$(mktemp -d "$CACHE/run.XXXXXX")
    # The suite's temporary files (its config, FIFOs, t.TempDir() with a second containerd's
    # socket, whose path must stay under 108 bytes) in a short private directory.
    tmp=$(mktemp -d)
    local start=$SECONDS rc=0
    (
        cd "$work"
        TMPDIR=$tmp TEST_RUNTIME=$runtime PYRUNC_CONFORMANCE_DIR=$work \
            PYRUNC_CONFORMANCE_IMAGE=$out_dir/pyrunc-test-image.tar \
            timeout -s KILL $((limit + 30)) \
            unshare --pid --fork --kill-child --mount-proc --propagation private -- \
            bash "$conf/in-namespace.sh" "$work/leftovers" \
            "$test_binary" -test.root -test.v -test.run "$regex" -test.timeout "${limit}s"
    ) >"$log_file" 2>&1 || rc=$?
    log "$runtime: suite exited $rc after $((SECONDS - start)) s (log: $log_file)"
    if [[ -f $work/leftovers ]]; then
        cp "$work/leftovers" "$results_dir/$name.leftovers"
    else
        echo "unknown - the run was killed before its leftover check" >"$results_dir/$name.leftovers"
    fi
    # Top-level results only (subtests are indented).
    sed -n 's/^--- \(PASS\|FAIL\|SKIP\): \(Test[A-Za-z0-9_]*\) .*/\2 \1/p' "$log_file" \
        >"$results_dir/$name.results"
    if grep -qsF "$work" /proc/self/mountinfo; then   # none expected: private mount namespace
        grep -F "$work" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r umount -l
    fi
    rm -rf "$work" "$tmp"
}

# The tests a run's log shows running (started or continued) without a result: the ones the
# suite's timeout cut short. (A paused parallel test that never continued is not among them.)
hung_tests() {
    awk '/^=== (RUN|CONT) / && $3 !~ /\// {s[$3] = "run"}
         /^=== PAUSE / {s[$3] = "pause"}
         /^--- (PASS|FAIL|SKIP): / {s[$3] = "done"}
         END {for (t in s) if (s[t] == "run") print t}' "$1" | sort
}

# Runs the suite for one runtime until every test has a result: a test the timeout cut
# short gets HANG, and the tests that had no result yet run again without it (up to three
# times); a TestMain that gave up before any test gets the whole suite again. The first run's
# files are $results_dir/RUNTIME.*, further runs' RUNTIME.more-N.* (results and leftovers
# are added to the first's).
run_complete() {
    local runtime=$1 regex=$2 missing hung more n
    run_suite "$runtime" "$runtime" "$regex" "$timeout_s"
    local last_log=$results_dir/$runtime.log
    for n in 1 2 3; do
        missing=$(comm -23 <(printf '%s\n' "${tests[@]}" | sort) \
            <(awk '{print $1}' "$results_dir/$runtime.results" | sort))
        [[ -n $missing ]] || return 0
        hung=$(hung_tests "$last_log")
        if [[ -n $hung ]]; then
            log "$runtime: cut short by the timeout in $(paste -sd' ' <<<"$hung")"
            awk '{print $1, "HANG"}' <<<"$hung" >>"$results_dir/$runtime.results"
        elif ! grep -q '^=== RUN' "$last_log"; then
            # The suite's TestMain gave up before any test: it dials its containerd once the
            # socket file exists, and a dial between containerd's bind and listen is refused.
            log "$runtime: no test ran: $(grep -m1 -v 'level=' "$last_log" | cut -c1-300)"
        fi
        more=$(comm -23 <(echo "$missing") <(echo "$hung") | awk NF)
        [[ -n $more ]] || return 0
        log "$runtime: running the $(wc -l <<<"$more") tests without a result again"
        run_suite "$runtime" "$runtime.more-$n" "^($(paste -sd'|' <<<"$more"))\$" "$timeout_s"
        cat "$results_dir/$runtime.more-$n.results" >>"$results_dir/$runtime.results"
        cat "$results_dir/$runtime.more-$n.leftovers" >>"$results_dir/$runtime.leftovers"
        last_log=$results_dir/$runtime.more-$n.log
    done
}

result_of() { awk -v t="$2" '$1 == t {print $2; exit}' "$results_dir/$1.results" 2>/dev/null || true; }

# A test's cell in the table: its result, "-" for none, and after ">" the retry's result.
cell() {
    local first retry
    first=$(result_of "$1" "$2")
    first=${first:--}
    if [[ -f $results_dir/$1.retry.results ]] && grep -qx "$2" "$results_dir/$1.retry.tests"; then
        retry=$(result_of "$1.retry" "$2")
        first+=">${retry:--}"
    fi
    echo "$first"
}

# Tests that pass with the reference runtime ($1) but not with runtime $2 ("" if the
# retry is to be consulted: then only those that did not pass on the retry either).
regressions_of() {
    local ref=$1 runtime=$2 use_retry=$3 t v
    for t in "${tests[@]}"; do
        [[ $(result_of "$ref" "$t") == PASS ]] || continue
        [[ $(result_of "$runtime" "$t") == PASS ]] && continue
        if [[ $use_retry == 1 ]]; then
            v=$(result_of "$runtime.retry" "$t")
            [[ $v == PASS ]] && continue
        fi
        echo "$t"
    done
}

report() {
    local runtimes=("$@") ref=$1 t r f width=48 failed=0 list flaky
    local results=$results_dir/results.txt
    {
        printf '%-*s' "$width" "test"
        for r in "${runtimes[@]}"; do printf ' %-11s' "${r#io.containerd.}"; done
        echo
        for t in "${tests[@]}"; do
            printf '%-*s' "$width" "$t"
            for r in "${runtimes[@]}"; do printf ' %-11s' "$(cell "$r" "$t")"; done
            echo
        done
        echo
        for r in "${runtimes[@]}"; do
            printf '%s: %s PASS, %s FAIL, %s SKIP, %s HANG, %s without result, of %s\n' "$r" \
                "$(grep -c ' PASS$' "$results_dir/$r.results" || true)" \
                "$(grep -c ' FAIL$' "$results_dir/$r.results" || true)" \
                "$(grep -c ' SKIP$' "$results_dir/$r.results" || true)" \
                "$(grep -c ' HANG$' "$results_dir/$r.results" || true)" \
                "$((${#tests[@]} - $(wc -l <"$results_dir/$r.results")))" "${#tests[@]}"
        done
        echo "left out: $(excluded_tests | wc -l) tests (hack/conformance/excluded.txt)"
        echo "A>B: the first run's result A; B when the test ran again, alone"
    } | sed 's/[[:space:]]*$//' >"$results"

    for r in "${runtimes[@]:1}"; do
        list=$(regressions_of "$ref" "$r" 1)
        flaky=$(comm -23 <(regressions_of "$ref" "$r" 0 | sort) <(echo "$list" | sort) | awk NF)
        if [[ -n $flaky ]]; then
            echo "$r: passed only when run again, alone:"
            sed 's/^/    /' <<<"$flaky"
        fi >>"$results"
        if [[ -n $list ]]; then
            failed=1
            echo "FAILED: passes with $ref, not with $r:"
            sed 's/^/    /' <<<"$list"
        fi >>"$results"
    done
    # Leftovers: "KIND PID ARGV" (hack/conformance/in-namespace.sh). A runtime's warm helpers
    # outlive shims by design, and the suite's containerd stays when the suite timed out; any
    # other process left with a runtime under test fails the run.
    local when
    for r in "${runtimes[@]}"; do
        for f in "$results_dir/$r.leftovers" "$results_dir/$r.retry.leftovers"; do
            [[ -s $f ]] || continue
            when="the suite"
            [[ $f == *.retry.leftovers ]] && when="the tests run again alone"
            if [[ $r != "$ref" ]] && grep -Eqv '^(helper|containerd) ' "$f"; then
                failed=1
                echo "FAILED: processes of $r outlived $when (killed):"
            else
                echo "$r: processes that outlived $when (killed):"
            fi
            sort -u "$f" | sort -k1,1 -k2,2n | sed 's/^/    /'
        done >>"$results"
    done
    cat "$results"
    return "$failed"
}

created_cgroups=()
remove_created_cgroups() {
    local d
    for d in "${created_cgroups[@]}"; do
        rmdir "$d" 2>/dev/null || true
    done
}

main() {
    [[ $EUID == 0 ]] || die "run as root"
    local runtimes=("$@")
    ((${#runtimes[@]})) || runtimes=("${DEFAULT_RUNTIMES[@]}")
    local upstream_dev upstream_ctrd
    mkdir -p "$CACHE" "$results_dir"
    install_packages
    upstream_dev=$(upstream_version "$(dpkg-query -W -f='${Version}' "$DEV_PACKAGE")")
    upstream_ctrd=$(upstream_version "$(dpkg-query -W -f='${Version}' containerd)")
    [[ $upstream_dev == "$upstream_ctrd" ]] \
        || die "$DEV_PACKAGE is $upstream_dev but containerd is $upstream_ctrd: the suite must match the daemon"
    build_suite
    bash "$repo/hack/image/build.sh" >&2

    local all excluded name
    all=$(suite_tests)
    excluded=$(excluded_tests)
    for name in $excluded; do
        grep -qx "$name" <<<"$all" || die "excluded.txt names $name, which the suite does not have"
    done
    if [[ -n ${PYRUNC_CONFORMANCE_TESTS:-} ]]; then
        for name in $PYRUNC_CONFORMANCE_TESTS; do
            grep -qx "$name" <<<"$all" || die "the suite has no test $name"
        done
        mapfile -t tests < <(tr ' ' '\n' <<<"$PYRUNC_CONFORMANCE_TESTS" | awk NF | sort -u)
    else
        mapfile -t tests < <(comm -23 <(echo "$all") <(echo "$excluded"))
    fi
    local regex
    regex="^($(IFS='|'; echo "${tests[*]}"))\$"
    log "${#tests[@]} tests, $(wc -l <<<"$excluded") left out; runtimes: ${runtimes[*]}"

    # runc makes a parent cgroup per containerd namespace ("testing") in each hierarchy: the
    # ones this script brought into being go at its end, if empty (rmdir: another user's stay).
    local d
    for d in /sys/fs/cgroup/*/; do
        [[ -d $d$TEST_NAMESPACE ]] || created_cgroups+=("$d$TEST_NAMESPACE")
    done
    trap remove_created_cgroups EXIT

    local r retry
    rm -f "$results_dir"/*.results "$results_dir"/*.leftovers "$results_dir"/*.tests \
        "$results_dir"/*.log "$results_dir/results.txt"
    for r in "${runtimes[@]}"; do
        log "running the suite with $r"
        run_complete "$r" "$regex"
    done
    [[ -s $results_dir/${runtimes[0]}.results ]] \
        || die "no test ran with the reference runtime ${runtimes[0]} (log: $results_dir/${runtimes[0]}.log)"
    # A test that fails with a runtime but passes with the reference runs once more for that
    # runtime, alone (a hang then holds up no other test): the table shows both results, and
    # a pass then (a test racing with itself, or failing because another test left a process
    # behind) does not fail the run. PYRUNC_CONFORMANCE_RETRY=0 turns this off.
    local t
    if [[ ${PYRUNC_CONFORMANCE_RETRY:-1} != 0 ]]; then
        for r in "${runtimes[@]:1}"; do
            retry=$(regressions_of "${runtimes[0]}" "$r" 0)
            [[ -n $retry ]] || continue
            echo "$retry" >"$results_dir/$r.retry.tests"
            : >"$results_dir/$r.retry.results"
            : >"$results_dir/$r.retry.leftovers"
            for t in $retry; do
                log "running $t again with $r, alone"
                run_suite "$r" "$r.retry.$t" "^$t\$" "$retry_timeout_s"
                cat "$results_dir/$r.retry.$t.results" >>"$results_dir/$r.retry.results"
                cat "$results_dir/$r.retry.$t.leftovers" >>"$results_dir/$r.retry.leftovers"
                rm -f "$results_dir/$r.retry.$t.results" "$results_dir/$r.retry.$t.leftovers"
            done
        done
    fi
    if report "${runtimes[@]}"; then
        exit 0
    fi
    exit 1
}

main "$@"
