#!/usr/bin/env python3
"""Apply the few edits containerd's integration/client suite needs to run here.

Strategy: each edit replaces one exact piece of the suite's source, which must occur exactly
once (so a different containerd release fails loudly instead of being half-edited). The new
code calls helpers from local_test.go (beside this file), which hack/conformance.sh copies
into the package. Nothing else in the suite changes:

1. client_unix_test.go: the daemon's root, state and socket (fixed paths under /var/lib and
   /run) move into the per-run directory $PYRUNC_CONFORMANCE_DIR.
2. client_test.go, createShimDebugConfig: the daemon's config also disables the CRI plugin
   (a private containerd must not serve CRI beside the system's).
3. client_test.go, TestMain: the seed image ghcr.io/containerd/busybox:1.32 is imported from
   the project's test image archive instead of pulled (no registry here).

Usage: edit-suite.py PACKAGE_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

EDITS: list[tuple[str, str, str]] = [
    (
        "client_unix_test.go",
        'const (\n'
        '\tdefaultRoot    = "/var/lib/containerd-test"\n'
        '\tdefaultState   = "/run/containerd-test"\n'
        '\tdefaultAddress = "/run/containerd-test/containerd.sock"\n'
        ')\n',
        'var (\n'
        '\tdefaultRoot    = conformancePath("root")\n'
        '\tdefaultState   = conformancePath("state")\n'
        '\tdefaultAddress = conformancePath("state/containerd.sock")\n'
        ')\n',
    ),
    (
        "client_test.go",
        'f.WriteString("version = 2\\n")',
        'f.WriteString("version = 2\\ndisabled_plugins = [\\"io.containerd.grpc.v1.cri\\"]\\n")',
    ),
    (
        "client_test.go",
        "if _, err = client.Pull(ctx, testImage, WithPullUnpack); err != nil {",
        "if err = seedImage(ctx, client, testSnapshotter); err != nil {",
    ),
]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    package = Path(argv[1])
    for name, old, new in EDITS:
        path = package / name
        text = path.read_text()
        count = text.count(old)
        if count != 1:
            print(
                f"edit-suite: {path}: expected the text to replace once, found it {count} times:"
                f"\n{old}",
                file=sys.stderr,
            )
            return 1
        path.write_text(text.replace(old, new))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
