"""hack/shim_pages.py on live processes: smaps sums by kind of mapping, and the pages a forked
child shares with its parent, copied from it, or made itself.

Strategy: hack/ is not a package, so the script is loaded from its path. The child is a fork
of a fresh interpreter (a fork inside pytest's process would fork pytest) that writes to a
known number of pages it shares with its parent, and allocates a known number of new ones.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "hack" / "shim_pages.py"


@pytest.fixture(scope="module")
def sp() -> ModuleType:
    spec = importlib.util.spec_from_file_location("shim_pages", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["shim_pages"] = module
    spec.loader.exec_module(module)
    return module


def test_breakdown_sums_every_kind_into_the_total(sp: ModuleType) -> None:
    kinds = sp.breakdown(os.getpid())
    assert {"heap", "anon", "exe", "stack", "total"} <= set(kinds)
    for field in ("rss", "pss", "private_dirty"):
        assert kinds["total"][field] == sum(
            k[field] for name, k in kinds.items() if name != "total"
        )
    rollup = Path(f"/proc/{os.getpid()}/smaps_rollup").read_text()
    rss = int(rollup.split("\nRss:")[1].split()[0])
    assert abs(kinds["total"]["rss"] - rss) <= rss // 50  # the process moved meanwhile


@pytest.mark.skipif(os.geteuid() != 0, reason="page frame numbers need root")
def test_pagemap_tells_shared_copied_and_new_pages_apart() -> None:
    """A child of a process holding a 64-page buffer writes one byte into 16 of its pages
    and fills a new 32-page buffer: in the buffer 16 pages copied and 48 still shared, the
    new one's 32 pages its own; the sums by kind count at least those."""
    code = textwrap.dedent(f"""
        import ctypes, json, mmap, os, sys, time
        sys.path.insert(0, {str(SCRIPT.parent)!r})
        import shim_pages as sp

        page = sp.PAGE
        old = mmap.mmap(-1, 64 * page, flags=mmap.MAP_PRIVATE)
        old.write(b"x" * (64 * page))
        old_at = ctypes.addressof(ctypes.c_char.from_buffer(old))
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            for i in range(16):
                old[i * page] = ord("y")
            new = mmap.mmap(-1, 32 * page, flags=mmap.MAP_PRIVATE)
            new.write(b"z" * (32 * page))
            os.write(w, str(ctypes.addressof(ctypes.c_char.from_buffer(new))).encode())
            time.sleep(30)
            os._exit(0)
        new_at = int(os.read(r, 64))
        child = os.open(f"/proc/{{pid}}/pagemap", os.O_RDONLY)
        parent = os.open("/proc/self/pagemap", os.O_RDONLY)
        mine = sp._frames(child, old_at, old_at + 64 * page)
        theirs = sp._frames(parent, old_at, old_at + 64 * page)
        made = sp._frames(child, new_at, new_at + 32 * page)
        there = sp._frames(parent, new_at, new_at + 32 * page)
        kinds = sp.copied_pages(pid, os.getpid())["kib"]["anon"]
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        print(json.dumps({{
            "copied": sum(a != b for a, b in zip(mine, theirs)),
            "shared": sum(a == b >= 0 for a, b in zip(mine, theirs)),
            "new": sum(a >= 0 for a in made), "in_parent": sum(b >= 0 for b in there),
            "kinds": kinds, "page_kib": page // 1024,
        }}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    got = json.loads(out)
    assert (got["copied"], got["shared"]) == (16, 48)
    assert (got["new"], got["in_parent"]) == (32, 0)
    kib = got["page_kib"]
    assert got["kinds"]["copied"] >= 16 * kib
    assert got["kinds"]["new"] >= 32 * kib
    assert got["kinds"]["shared"] >= 48 * kib


def test_find_forkserver_takes_the_daemons_parent(sp: ModuleType) -> None:
    """Of two processes titled as fork servers in the same cgroups, the daemon's own parent
    is its fork server: the other (older: found first in /proc) may be a stale one, whose
    pages it does not share."""
    code = textwrap.dedent("""
        import os, sys, time
        from shim.proctitle import set_cmdline

        child = os.fork() if sys.argv[1] == "fork" else 0
        if child == 0 and sys.argv[1] == "fork":
            time.sleep(30)
            os._exit(0)
        set_cmdline(["containerd-shim-pyrunc-v2", "forkserver"])
        print(os.getpid(), child, flush=True)
        time.sleep(30)
    """) + "#" * 200  # room in the argv area for the title
    procs = [subprocess.Popen([sys.executable, "-c", code, arg], stdout=subprocess.PIPE,
                              text=True) for arg in ("alone", "fork")]
    child = 0
    try:
        (stale, _), (server, child) = (map(int, p.stdout.readline().split())  # type: ignore[union-attr]
                                       for p in procs)
        assert stale < server  # /proc lists the stale one first
        assert sp.find_forkserver(child) == server
    finally:
        if child:
            os.kill(child, 9)
        for p in procs:
            p.kill()
            p.wait()
