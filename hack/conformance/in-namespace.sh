#!/usr/bin/env bash
# Process 1 of the PID and mount namespace hack/conformance.sh runs containerd's
# integration/client suite in (unshare --pid --fork --mount-proc --propagation private).
#
# 1. /run becomes a private tmpfs: runc's state (/run/containerd/runc), shim sockets
#    (/run/containerd/s) and a runtime's warm processes' sockets are the suite's own, neither
#    seen by nor taken from the host's containerd and shims, and gone with the namespace.
# 2. The suite runs.
# 3. Its containerd has stopped by then, so every process still in the namespace outlived
#    the suite: each is written to LEFTOVERS as "KIND PID ARGV..." and killed. KIND is
#    "shim" (a shim with a container id), "helper" (a shim binary's long-lived warm process,
#    kept by design: pyrunc's fork server and network template), "containerd" (the suite's
#    own, when the suite was cut short by its timeout), or "process" (anything else, such
#    as a container's processes). Reporting from here, before this process
#    exits, names them; the kernel would kill them silently when process 1 exits.
# 4. Containers left in runc's state are deleted (runc delete -f), which removes their cgroups.
#
# Usage: in-namespace.sh LEFTOVERS SUITE_ARGS...
set -uo pipefail

leftovers=$1
shift
: >"$leftovers"
runc_root=/run/containerd/runc/testing   # the suite's containerd namespace is "testing"

mount -t tmpfs -o mode=0755 conformance-run /run || exit 2

"$@"
rc=$?
say() { echo "in-namespace.sh: [${SECONDS}s] $*" >&2; }
say "the suite exited $rc"

# Every process but this shell and its subshells (same command line), read with builtins.
mapfile -d '' -t self <"/proc/$$/cmdline"
others() {
    local p args line kind
    for p in /proc/[0-9]*; do
        mapfile -d '' -t args <"$p/cmdline" 2>/dev/null || continue
        ((${#args[@]})) || continue   # zombies
        [[ ${args[*]} == "${self[*]}" ]] && continue
        line=${args[*]}
        line=${line%"${line##*[![:space:]]}"}   # a rewritten command line is padded
        kind=process
        if [[ ${args[0]##*/} == containerd ]]; then
            kind=containerd   # the suite's own, left running when the suite was cut short
        elif [[ ${args[0]##*/} == containerd-shim-* ]]; then
            case "$line " in
                *" -id "*) kind=shim ;;
                *" forkserver "|*" nethook-template "*) kind=helper ;;
            esac
        fi
        printf '%s %s %s\n' "$kind" "${p#/proc/}" "$line"
    done
}

# Waits up to $1 seconds until the namespace holds no process of a kind other than $2.
wait_for_exits() {
    local deadline=$((SECONDS + $1))
    while [[ -n $(others | grep -v "^$2 ") ]] && ((SECONDS < deadline)); do
        sleep 0.2
    done
}

# A shim exits shortly after its last container is deleted: give them 5 s (warm helpers
# stay by design).
wait_for_exits 5 helper
others >"$leftovers"
say "$(wc -l <"$leftovers") processes left"
while read -r _ pid _; do
    kill -KILL "$pid" 2>/dev/null
done <"$leftovers"
wait_for_exits 5 none

if [[ -d $runc_root ]]; then
    for state in "$runc_root"/*/state.json; do
        [[ -f $state ]] || continue
        id=${state%/state.json}
        id=${id##*/}
        runc --root "$runc_root" delete -f "$id" >/dev/null 2>&1 \
            || echo "in-namespace.sh: runc delete -f $id failed" >&2
    done
fi
say "done"
exit "$rc"
