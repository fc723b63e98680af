#!/usr/bin/env python3
"""What memory each shim keeps to itself, and which of the fork server's pages it copied.

Usage (root):
    hack/shim_pages.py PID [PID ...] [--words] [--json]
    hack/shim_pages.py --containers N [--settle S] [--words] [--json]

With PIDs: each is a live shim daemon. With ``--containers N``: a private containerd is started
(the integration harness's starter), N ``sleep`` containers are run on
``io.containerd.pyrunc.v2`` and N on ``io.containerd.runc.v2`` (each container its own shim,
alternating), the shims are left ``--settle`` seconds, measured, and everything is removed.

Per shim, from ``/proc/<pid>/smaps``: Rss, Pss and Private_Dirty summed by kind of mapping -
``heap`` ([heap]: glibc malloc), ``anon`` (unnamed anonymous: pymalloc arenas, mmap'd buffers,
thread stacks, the interpreter's .bss), ``stack``, ``exe`` (the interpreter binary's file
mappings: its .data), ``lib`` (other files) and ``other``. Sums over all shims of a runtime:
PSS and RSS (what a node pays).

For a pyrunc shim forked by the fork server (its parent, titled ``containerd-shim-pyrunc-v2
forkserver``, else such a process in the same cgroups; the same interpreter),
``/proc/<pid>/pagemap`` of both processes tells, per writable private mapping, the shim's
present pages that are still the fork server's (same frame: ``shared``), those it copied
(another frame at an address the fork server has present: ``copied``; pages KSM merged count
here too) and those it made (``new``). With ``--words``, every copied page is compared with
the fork server's word by word, and each differing word is put down to the object it falls
in, as the fork server has it (an object is a word followed by a pointer to a type object,
its size from the type): ``refcount <type>`` (the object's first word), ``body <type>``, or
``unattributed``. A page copied for a reference count that went up and back down again
differs in no word. The fork server may itself have written to some pages since the fork
(its serve loop), which then count as copied for the shim: a small error, the same for every
shim.

What it found (issue 14): a served daemon's private memory is the fork server's pages it
touched, and mostly the same pages with the same contents in every daemon; see
shim/forkserver.py.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAGE = os.sysconf("SC_PAGE_SIZE")
PYRUNC = "io.containerd.pyrunc.v2"
RUNC = "io.containerd.runc.v2"
FORKSERVER_TITLE = [b"containerd-shim-pyrunc-v2", b"forkserver"]
_PRESENT = 1 << 63
_PFN_MASK = (1 << 55) - 1
_TP_FLAGS = 168  # offsetof(PyTypeObject, tp_flags) on 64-bit CPython 3.11
_TPFLAGS_TYPE_SUBCLASS = 1 << 31


def _signed(word: int) -> int:
    return word - (1 << 64) if word >= 1 << 63 else word


# -- smaps -----------------------------------------------------------------------------


def _mappings(pid: int) -> list[dict[str, object]]:
    """``/proc/<pid>/smaps`` as a list of mappings: start, end, perms, name and the kB fields."""
    out: list[dict[str, object]] = []
    current: dict[str, object] | None = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(None, 5)
        if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            start, end = (int(x, 16) for x in head[0].split("-"))
            current = {"start": start, "end": end, "perms": head[1],
                       "name": head[5] if len(head) > 5 else ""}
            out.append(current)
        elif current is not None and len(head) >= 2 and head[1].isdigit():
            current[head[0].rstrip(":")] = int(head[1])
    return out


def _kind(mapping: dict[str, object], exe: str) -> str:
    name = str(mapping["name"])
    if name == "[heap]":
        return "heap"
    if name == "[stack]":
        return "stack"
    if not name:
        return "anon"
    if name == exe:
        return "exe"
    if name.startswith("/"):
        return "lib"
    return "other"


def breakdown(pid: int) -> dict[str, dict[str, int]]:
    """Rss, Pss and Private_Dirty (KiB) per kind of mapping, and their ``total``."""
    exe = os.readlink(f"/proc/{pid}/exe")
    kinds: dict[str, dict[str, int]] = {}
    for m in _mappings(pid):
        k = kinds.setdefault(_kind(m, exe), {"rss": 0, "pss": 0, "private_dirty": 0})
        k["rss"] += int(m.get("Rss", 0))  # type: ignore[call-overload]
        k["pss"] += int(m.get("Pss", 0))  # type: ignore[call-overload]
        k["private_dirty"] += int(m.get("Private_Dirty", 0))  # type: ignore[call-overload]
    total = {f: sum(k[f] for k in kinds.values()) for f in ("rss", "pss", "private_dirty")}
    return {**kinds, "total": total}


# -- the fork server's pages -------------------------------------------------------------


def find_forkserver(pid: int) -> int | None:
    """The fork server ``pid`` was forked from: its parent (a daemon is the fork server's
    child), else - a daemon whose server has ended and was replaced - the fork server in
    ``pid``'s cgroups, if any. (Several may live in one cgroup for a while, a stale one
    until its next request or check: the parent is the one whose pages it shares.)"""
    try:
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        if Path(f"/proc/{parent}/cmdline").read_bytes().split(b"\0")[:2] == FORKSERVER_TITLE:
            return parent
    except (OSError, ValueError, IndexError):
        pass
    cgroups = Path(f"/proc/{pid}/cgroup").read_text()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if argv[:2] == FORKSERVER_TITLE and (entry / "cgroup").read_text() == cgroups:
                return int(entry.name)
        except OSError:
            continue
    return None


def _frames(pagemap: int, start: int, end: int) -> list[int]:
    """Frame number per page of [start, end) (-1: not present)."""
    n = (end - start) // PAGE
    raw = os.pread(pagemap, n * 8, start // PAGE * 8)
    return [e & _PFN_MASK if e & _PRESENT else -1 for e in struct.unpack(f"{n}Q", raw)]


class _Mem:
    """Reads of another process's memory, and type names of its objects."""

    def __init__(self, pid: int) -> None:
        self.fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
        self._types: dict[int, tuple[str, int, int] | None] = {}

    def read(self, addr: int, size: int) -> bytes:
        if not 0 < addr < 1 << 47:  # user space only
            return b""
        try:
            return os.pread(self.fd, size, addr)
        except OSError:
            return b""

    def word(self, addr: int) -> int | None:
        raw = self.read(addr, 8)
        return struct.unpack("Q", raw)[0] if len(raw) == 8 else None

    def type_of(self, addr: int) -> tuple[str, int, int] | None:
        """``(tp_name, tp_basicsize, tp_itemsize)`` if ``addr`` is a type object (its type
        has Py_TPFLAGS_TYPE_SUBCLASS), else None."""
        if addr in self._types:
            return self._types[addr]
        found = None
        meta = self.word(addr + 8) if addr % 8 == 0 else None
        flags = self.word(meta + _TP_FLAGS) if meta else None
        if flags is not None and flags & _TPFLAGS_TYPE_SUBCLASS:
            raw = self.read(addr + 24, 24)  # tp_name, tp_basicsize, tp_itemsize
            if len(raw) == 24:
                tp_name, basic, item = struct.unpack("QQQ", raw)
                text = self.read(tp_name, 80).split(b"\0", 1)[0]
                if text and text.isascii() and text.decode().isprintable() and basic < 1 << 20:
                    found = (text.decode(), basic, item)
        self._types[addr] = found
        return found

    def objects(self, words: tuple[int, ...], base: int) -> list[tuple[int, str, int]]:
        """Object headers among ``words`` (read at ``base``): (word index, type name, size in
        words), found as a word followed by a pointer to a type object."""
        found = []
        for k in range(len(words) - 2):
            tp = self.type_of(words[k + 1]) if words[k + 1] > PAGE else None
            if tp is not None:
                name, basic, item = tp
                size = basic + item * min(abs(_signed(words[k + 2])), 1 << 20) if item else basic
                found.append((k, name, max(size // 8, 2)))
        return found

    def close(self) -> None:
        os.close(self.fd)


def _attribute(
    addr: int, mine: _Mem, theirs: _Mem, counts: collections.Counter[str]
) -> None:
    """Count the words of the page at ``addr`` that differ between the shim (``mine``) and
    the fork server, by the object they fall in as the fork server has it: ``refcount
    <type>`` (the object's first word), ``body <type>``, or ``unattributed``; an object is
    looked for from the page before on."""
    a, b = mine.read(addr, PAGE), theirs.read(addr - PAGE, 2 * PAGE)
    if len(a) != PAGE or len(b) != 2 * PAGE:
        return
    wa = struct.unpack(f"{PAGE // 8}Q", a)
    wb = struct.unpack(f"{2 * PAGE // 8}Q", b)
    headers = theirs.objects(wb, addr - PAGE)
    n = PAGE // 8
    h = 0
    for j in range(n):
        if wa[j] == wb[n + j]:
            continue
        while h + 1 < len(headers) and headers[h + 1][0] <= n + j:
            h += 1
        if headers and headers[h][0] <= n + j < headers[h][0] + headers[h][2]:
            k, name, _size = headers[h]
            counts[f"{'refcount' if k == n + j else 'body'} {name}"] += 1
        else:
            counts["unattributed"] += 1


def copied_pages(pid: int, server: int, *, words: bool = False) -> dict[str, object]:
    """Pages of ``pid``'s writable private mappings: still the fork server's, copied, new
    (KiB per kind of mapping); with ``words``, what the copied pages' differing words are."""
    exe = os.readlink(f"/proc/{pid}/exe")
    theirs = {(m["start"], m["end"]): m for m in _mappings(server)}
    server_ranges = sorted((int(m["start"]), int(m["end"])) for m in theirs.values())  # type: ignore[call-overload]
    per_kind: dict[str, dict[str, int]] = {}
    touched: collections.Counter[str] = collections.Counter()
    mine_map = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    their_map = os.open(f"/proc/{server}/pagemap", os.O_RDONLY)
    mine_mem = _Mem(pid) if words else None
    their_mem = _Mem(server) if words else None
    try:
        for m in _mappings(pid):
            perms = str(m["perms"])
            if "w" not in perms or "p" not in perms:
                continue
            start, end = int(m["start"]), int(m["end"])  # type: ignore[call-overload]
            mine = _frames(mine_map, start, end)
            # the fork server's frames over the same addresses (mappings may differ in extent)
            their = [-1] * len(mine)
            for s, e in server_ranges:
                lo, hi = max(s, start), min(e, end)
                if lo < hi:
                    frames = _frames(their_map, lo, hi)
                    off = (lo - start) // PAGE
                    their[off:off + len(frames)] = frames
            k = per_kind.setdefault(_kind(m, exe), {"shared": 0, "copied": 0, "new": 0})
            for i, frame in enumerate(mine):
                if frame < 0:
                    continue
                if their[i] == frame:
                    k["shared"] += PAGE // 1024
                elif their[i] < 0:
                    k["new"] += PAGE // 1024
                else:
                    k["copied"] += PAGE // 1024
                    if mine_mem is not None and their_mem is not None:
                        _attribute(start + i * PAGE, mine_mem, their_mem, touched)
    finally:
        os.close(mine_map)
        os.close(their_map)
        for mem in (mine_mem, their_mem):
            if mem is not None:
                mem.close()
    result: dict[str, object] = {"kib": per_kind}
    if words:
        result["words_by_object"] = dict(touched.most_common(40))
    return result


def report(pids: list[int], *, words: bool) -> dict[str, object]:
    """Everything above for each of ``pids``, with sums."""
    shims = []
    for pid in pids:
        entry: dict[str, object] = {"pid": pid, "smaps": breakdown(pid)}
        server = find_forkserver(pid)
        if server is not None and os.readlink(f"/proc/{pid}/exe") == os.readlink(
            f"/proc/{server}/exe"
        ):
            entry["forkserver"] = server
            entry["pages"] = copied_pages(pid, server, words=words)
        shims.append(entry)
    sums = {f: sum(s["smaps"]["total"][f] for s in shims)  # type: ignore[index]
            for f in ("rss", "pss", "private_dirty")}
    return {"shims": shims, "sum_kib": sums}


def _mean_private(shims: list[dict[str, object]]) -> dict[str, float]:
    kinds: dict[str, float] = collections.defaultdict(float)
    for s in shims:
        for kind, fields in s["smaps"].items():  # type: ignore[attr-defined]
            if kind != "total":
                kinds[kind] += fields["private_dirty"] / len(shims)
    return dict(kinds)


def _mean_pages(shims: list[dict[str, object]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    with_pages = [s for s in shims if "pages" in s]
    for s in with_pages:
        for kind, fields in s["pages"]["kib"].items():  # type: ignore[index]
            k = out.setdefault(kind, {"shared": 0.0, "copied": 0.0, "new": 0.0})
            for f, v in fields.items():
                k[f] += v / len(with_pages)
    return out


def print_report(name: str, rep: dict[str, object]) -> None:
    shims = rep["shims"]
    assert isinstance(shims, list)
    sums = rep["sum_kib"]
    assert isinstance(sums, dict)
    print(f"{name}: {len(shims)} shims, sum PSS {sums['pss'] / 1024:.1f} MiB, "
          f"sum RSS {sums['rss'] / 1024:.1f} MiB, "
          f"sum Private_Dirty {sums['private_dirty'] / 1024:.1f} MiB")
    private = _mean_private(shims)
    print("  private dirty per shim (mean KiB): "
          + ", ".join(f"{k} {v:.0f}" for k, v in sorted(private.items(), key=lambda kv: -kv[1])))
    pages = _mean_pages(shims)
    if pages:
        print("  writable pages vs the fork server (mean KiB per shim):")
        for kind, f in sorted(pages.items()):
            print(f"    {kind:6} shared {f['shared']:7.0f}  copied {f['copied']:6.0f}  "
                  f"new {f['new']:6.0f}")
    first = next((s for s in shims if "pages" in s and "words_by_object" in s["pages"]), None)
    if first is not None:
        print(f"  pid {first['pid']}: copied pages' differing words, by object:")
        for what, n in first["pages"]["words_by_object"].items():
            print(f"    {n:6} {what}")


# -- a private containerd with N shims per runtime ------------------------------------


def with_containers(n: int, settle: float, *, words: bool) -> dict[str, object]:
    from integration.harness import IMAGE_REF, Containerd, ensure_image_tar, parent_pid

    daemon = Containerd.start()
    try:
        ctr = daemon.ctr()
        daemon.import_image(ensure_image_tar())
        ids: dict[str, list[str]] = {PYRUNC: [], RUNC: []}
        for i in range(n):
            for rt in (PYRUNC, RUNC) if i % 2 == 0 else (RUNC, PYRUNC):
                cid = f"pages-{rt.split('.')[2]}-{i}"
                ctr("run", "-d", "--runtime", rt, IMAGE_REF, cid, "sleep", "1000")
                ids[rt].append(cid)
        time.sleep(settle)
        tasks = {cid: t.pid for cid, t in ctr.tasks().items()}
        out: dict[str, object] = {}
        for rt, cids in ids.items():
            pids = sorted({p for c in cids if (p := parent_pid(tasks[c])) is not None})
            out[rt] = report(pids, words=words)
        return out
    finally:
        problems = daemon.stop()
        if problems:
            print(f"teardown: {problems}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pids", nargs="*", type=int)
    parser.add_argument("--containers", type=int, default=0,
                        help="start a private containerd with this many containers per runtime")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds between the last start and the measurement")
    parser.add_argument("--words", action="store_true",
                        help="classify the differing words of copied pages (slower)")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    if bool(args.pids) == bool(args.containers):
        parser.error("give shim pids or --containers N")
    if args.pids:
        results: dict[str, object] = {"shims": report(args.pids, words=args.words)}
    else:
        results = with_containers(args.containers, args.settle, words=args.words)
        if not args.json:
            for rt in (PYRUNC, RUNC):
                other = results[RUNC if rt == PYRUNC else PYRUNC]["sum_kib"]  # type: ignore[index]
                mine = results[rt]["sum_kib"]  # type: ignore[index]
                print(f"{rt}: PSS ratio to the other {mine['pss'] / other['pss']:.2f}")
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name, rep in results.items():
            print_report(name, rep)  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
