"""Every host program the project's Python code executes is listed in hack/host-programs.txt.

Strategy: the list is what `hack/install.sh` must provide and what `hack/fresh-check.sh` checks
in a fresh Debian root file system, so a program called but not listed is a missing install
step waiting for a fresh machine. The code is read, not run: :func:`programs_executed` walks
the AST of every ``.py`` file under ``shim/``, ``hack/`` and ``integration/`` and collects the
string literals that stand where a program name stands:

* the first element of a list or tuple literal passed to an exec call (``subprocess.run``,
  ``Popen``, ``check_output``, ``os.execv*``, ``asyncio.create_subprocess_exec``, and the
  project's own ``run``/``spawn``/``popen`` wrappers), directly, starred, or through a name
  assigned that literal in the same function;
* such a literal returned by a function whose name ends in ``argv`` (hook and helper
  command builders, e.g. ``lo_up_argv``) or ``_cmd``;
* the first string argument of a call whose arguments are the argv themselves
  (``create_subprocess_exec("ip", ...)``, a wrapper ``_run(netns, "ip", ...)``);
* the argument of ``shutil.which``.

Programs named by a path (``/usr/bin/env``) are checked by their base name. Arguments that
merely look like words (``["link", "set", ...]`` after a variable program) are not first
elements and are not collected.
"""

from __future__ import annotations

import ast
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LIST = REPO / "hack" / "host-programs.txt"
SCANNED = ("shim", "hack", "integration")
SKIPPED_DIRS = {"api", "__pycache__"}  # shim/api is generated code

# Exec calls whose first or second positional argument is a whole argv: functions called by
# a bare name matching this (the project's ``run``/``spawn`` wrappers, ``_run``, ``run_quiet``)
# or as an attribute of one of EXEC_MODULES. Methods (``self._run([...])``) prepend their own
# program (runc, ctr) and are not counted.
ARGV_CALL = re.compile(r"^_?(run|spawn|popen|call|check_call|check_output|exec\w*)(_\w+)?$",
                       re.IGNORECASE)
EXEC_MODULES = {"subprocess", "os", "asyncio"}
# Calls whose positional string arguments are the argv itself (program first).
VARARG_CALLS = {"create_subprocess_exec", "execl", "execlp", "_run"}
# Programs that run the next program word of their argv (after their own options).
WRAPPERS = {"nsenter", "unshare", "setsid", "timeout", "env", "chroot", "nice", "stdbuf"}
_PROGRAM = re.compile(r"^(/[\w./+-]+|[A-Za-z][\w.+-]*)$")

Seq = ast.List | ast.Tuple
Literals = dict[str, list[Seq]]


def _is_exec_call(node: ast.Call) -> bool:
    func = node.func
    if isinstance(func, ast.Name):
        return bool(ARGV_CALL.match(func.id))
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return func.value.id in EXEC_MODULES and bool(ARGV_CALL.match(func.attr))
    return False


def _call_name(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return ""


def _flatten(seq: Seq, literals: Literals) -> list[ast.expr]:
    """The elements of an argv literal with ``*[...]``, ``*([...] if c else [])`` and
    ``*NAME`` (NAME assigned a literal) expanded in place."""
    out: list[ast.expr] = []
    for elt in seq.elts:
        inner = elt.value if isinstance(elt, ast.Starred) else None
        if isinstance(inner, ast.IfExp) and isinstance(inner.body, ast.List | ast.Tuple):
            out.extend(_flatten(inner.body, literals))
        elif isinstance(inner, ast.List | ast.Tuple):
            out.extend(_flatten(inner, literals))
        elif isinstance(inner, ast.Name) and inner.id in literals:
            out.extend(_flatten(literals[inner.id][0], literals))
        else:
            out.append(elt)
    return out


def _word(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _program(word: str) -> str | None:
    if not _PROGRAM.match(word):
        return None
    return word.rsplit("/", 1)[-1] if word.startswith("/") else word


def _programs_of(seq: Seq, literals: Literals) -> list[str]:
    """The program an argv literal runs, and the one a wrapper at its head runs."""
    elts = _flatten(seq, literals)
    found: list[str] = []
    i = 0
    while i < len(elts):
        word = _word(elts[i])
        prog = _program(word) if word is not None else None
        if prog is None:
            break
        found.append(prog)
        if prog not in WRAPPERS:
            break
        i += 1  # skip the wrapper's own options and values (--net=..., a duration, a name)
        while i < len(elts):
            w = _word(elts[i])
            if w is not None and not w.startswith("-") and not w[:1].isdigit():
                break
            i += 1
    return found


class _Scanner(ast.NodeVisitor):
    def __init__(self) -> None:
        self.found: list[tuple[str, int]] = []
        self.module_literals: Literals = {}

    def _add_seq(self, seq: Seq, literals: Literals) -> None:
        for prog in _programs_of(seq, literals):
            self.found.append((prog, seq.lineno))

    def _add_word(self, node: ast.expr) -> None:
        word = _word(node)
        if word is not None and (prog := _program(word)) is not None:
            self.found.append((prog, node.lineno))

    @staticmethod
    def _literals(scope: ast.AST) -> Literals:
        literals: Literals = {}
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.List | ast.Tuple):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        literals.setdefault(target.id, []).append(node.value)
            elif (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(node.value, ast.List | ast.Tuple)
            ):
                literals.setdefault(node.target.id, []).append(node.value)
        return literals

    def _scan_scope(self, scope: ast.AST) -> None:
        """Calls in this scope, with the names it (or the module) assigns argv literals."""
        literals = {**self.module_literals, **self._literals(scope)}
        for node in ast.walk(scope):
            if not isinstance(node, ast.Call):
                continue
            if _is_exec_call(node):
                for arg in node.args[:2]:
                    inner = arg.value if isinstance(arg, ast.Starred) else arg
                    if isinstance(inner, ast.List | ast.Tuple):
                        self._add_seq(inner, literals)
                    elif isinstance(inner, ast.Name):
                        for lit in literals.get(inner.id, []):
                            self._add_seq(lit, literals)
            name = _call_name(node)
            if name in VARARG_CALLS and not any(
                isinstance(a, ast.List | ast.Tuple | ast.Starred) for a in node.args[:2]
            ):
                strings = [a for a in node.args if _word(a) is not None]
                if strings:
                    self._add_word(strings[0])
            if name == "which" and node.args:
                self._add_word(node.args[0])

    def visit_Module(self, node: ast.Module) -> None:
        top = ast.Module(
            body=[
                n for n in node.body
                if not isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            ],
            type_ignores=[],
        )
        self.module_literals = self._literals(top)
        self._scan_scope(top)
        self.generic_visit(node)

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._scan_scope(node)  # nested functions included: not descended into again
        if node.name.endswith(("argv", "_cmd")):
            literals = {**self.module_literals, **self._literals(node)}
            for sub in ast.walk(node):
                if isinstance(sub, ast.Return) and isinstance(sub.value, ast.List | ast.Tuple):
                    self._add_seq(sub.value, literals)

    visit_FunctionDef = _visit_function
    visit_AsyncFunctionDef = _visit_function


def programs_in_source(source: str) -> list[tuple[str, int]]:
    """(program, line) for every program the source executes, as far as the rules see."""
    scanner = _Scanner()
    scanner.visit(ast.parse(source))
    return scanner.found


def _python_files() -> Iterator[Path]:
    for top in SCANNED:
        for path in sorted((REPO / top).rglob("*.py")):
            if not SKIPPED_DIRS.intersection(path.relative_to(REPO).parts[1:-1]):
                yield path


def programs_executed() -> dict[str, list[str]]:
    """Program -> the places (``path:line``) that execute it."""
    where: dict[str, list[str]] = {}
    for path in _python_files():
        for prog, line in programs_in_source(path.read_text()):
            where.setdefault(prog, []).append(f"{path.relative_to(REPO)}:{line}")
    return where


def listed_programs(text: str) -> dict[str, str]:
    """Program -> how it is provided, from the list's ``program  provider`` lines."""
    listed: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        prog, _, provider = line.partition(" ")
        if not provider.strip():
            raise ValueError(f"{LIST.name}: {prog!r} names no package or install step")
        listed[prog] = provider.strip()
    return listed


def missing_programs(where: dict[str, list[str]], listed: dict[str, str]) -> dict[str, list[str]]:
    return {prog: places for prog, places in where.items() if prog not in listed}


def test_every_executed_program_is_listed() -> None:
    missing = missing_programs(programs_executed(), listed_programs(LIST.read_text()))
    assert not missing, (
        "programs executed but not in hack/host-programs.txt (add each with the Debian "
        "package or install step that provides it, and make hack/install.sh install it):\n"
        + "\n".join(f"  {prog}: {', '.join(places)}" for prog, places in sorted(missing.items()))
    )


def test_the_scan_finds_the_programs_we_know_are_run() -> None:
    """The rules still see the project's real calls (a scanner that finds nothing passes
    the test above vacuously)."""
    found = programs_executed()
    for prog in ("nsenter", "ip", "ctr", "iptables", "nft", "criu", "containerd"):
        assert prog in found, f"the scan no longer sees {prog!r} being executed"


SAMPLE = textwrap.dedent(
    """
    import asyncio, os, shutil, subprocess

    ARGV = ["tar", "-x"]

    def f(reaper, netns):
        subprocess.run(["frobnicate", "--now"], check=True)
        argv = ["nsenter", "--net=/proc/1/ns/net", "ip", "link"]
        spawn(reaper, argv)
        subprocess.Popen([*ARGV, "-f", "x"])
        _run(netns, "bridge", "link")
        subprocess.run([*(["nsenter", f"--net={netns}"] if netns else []), "ss", "-tn"])
        subprocess.run(["unshare", "--net", "sleep", "60"])
        self._run(["start", cid])                      # a method: runc's own subcommand
        shutil.which("zstd")
        os.execv("/usr/sbin/iptables-legacy", ["iptables-legacy", "-L"])
        subprocess.run([binary, "link", "set"])        # a variable program: not a literal

    async def g():
        await asyncio.create_subprocess_exec("ethtool", "-k", "eth0")

    def hook_argv():
        return ["/usr/bin/env", "python3"]

    def not_exec():
        words = ["hello", "world"]
        print(words)
    """
)


def test_scanner_rules_on_a_sample() -> None:
    found = {prog for prog, _ in programs_in_source(SAMPLE)}
    assert found == {
        "frobnicate", "nsenter", "ip", "tar", "bridge", "ss", "unshare", "sleep", "zstd",
        "iptables-legacy", "ethtool", "env", "python3",
    }


def test_a_program_missing_from_the_list_fails() -> None:
    """The check itself: a call to a program the list lacks is reported with its place."""
    where = {"frobnicate": ["x.py:3"], "ip": ["y.py:9"]}
    listed = listed_programs("ip  iproute2\n# comment\n")
    assert missing_programs(where, listed) == {"frobnicate": ["x.py:3"]}
    assert missing_programs({"ip": ["y.py:9"]}, listed) == {}


def test_list_lines_name_their_provider() -> None:
    with pytest.raises(ValueError, match="names no package"):
        listed_programs("frobnicate\n")
    listed = listed_programs(LIST.read_text())
    assert listed["criu"].startswith("hack/install.sh")
