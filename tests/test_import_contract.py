"""The Raft core stays pure: no I/O, no clock, no threads, no global randomness.

README ("Architecture") promises that kvstore/raft is deterministic: time is tick(), input
is step(), randomness is an injected random.Random. That is what lets the simulator replay
a seed exactly. This test reads every module of kvstore/raft with `ast` (importing nothing)
and fails, naming the module, line and import, when one reaches for the outside world:
asyncio, grpc, lmdb, time, os, threading, socket, subprocess, concurrent (and importlib,
which would be a way around all of these), or any kvstore package other than kvstore.raft.
`random` is allowed only for the `random.Random` type: any other use of the module (e.g.
random.random(), random.randint) would draw from the global, unseeded generator.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RAFT = ROOT / "kvstore" / "raft"
PACKAGE = "kvstore.raft"

FORBIDDEN = frozenset({
    "asyncio", "grpc", "lmdb", "time", "os", "threading", "socket", "subprocess",
    "concurrent", "importlib",
})
RANDOM_ALLOWED = frozenset({"Random"})


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _resolve(module: str | None, level: int, here: str, is_package: bool) -> str:
    """Absolute name of `from <level dots><module> import ...` written in module `here`."""
    if level == 0:
        return module or ""
    base = here.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _imported(tree: ast.AST, here: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, dotted name) of everything a module imports, wherever the import statement
    sits (module level, functions, TYPE_CHECKING blocks). `from a import b` yields a.b so
    that `from kvstore import server` is seen as importing kvstore.server."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module, node.level, here, is_package)
            found.extend((node.lineno, f"{base}.{alias.name}" if base else alias.name)
                         for alias in node.names)
    return found


def _forbidden(name: str) -> str | None:
    """Why importing `name` breaks the contract, or None."""
    top = name.split(".")[0]
    if top in FORBIDDEN:
        return "does I/O, reads a clock or runs threads"
    if top == "kvstore":
        parts = name.split(".")
        if len(parts) < 2 or parts[1] != "raft":
            return "reaches outside kvstore.raft"
    if top == "random" and name not in ("random", *(f"random.{a}" for a in RANDOM_ALLOWED)):
        return "takes something other than the Random type from random"
    return None


def _random_aliases(tree: ast.AST) -> set[str]:
    """Local names bound to the random module (`import random`, `import random as r`)."""
    return {alias.asname or alias.name
            for node in ast.walk(tree) if isinstance(node, ast.Import)
            for alias in node.names if alias.name == "random"}


def _random_misuse(tree: ast.AST) -> list[tuple[int, str]]:
    """Uses of the random module other than naming the Random type, and the module
    itself passed around as a value (which would hide such uses)."""
    aliases = _random_aliases(tree)
    if not aliases:
        return []
    as_attribute_base = {id(node.value) for node in ast.walk(tree)
                         if isinstance(node, ast.Attribute)}
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and node.attr not in RANDOM_ALLOWED):
            found.append((node.lineno, f"{node.value.id}.{node.attr}"))
        elif (isinstance(node, ast.Name) and node.id in aliases
              and id(node) not in as_attribute_base):
            found.append((node.lineno, f"{node.id} (the module used as a value)"))
    return found


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """Every breach of the contract in one module's source, as readable lines."""
    tree = ast.parse(source)
    out = [f"{module}:{line}: imports {name}: {why}"
           for line, name in _imported(tree, module, is_package)
           if (why := _forbidden(name)) is not None]
    out += [f"{module}:{line}: uses {what}: only random.Random (an injected generator) "
            "is allowed" for line, what in _random_misuse(tree)]
    return out


def _raft_modules() -> list[Path]:
    return sorted(RAFT.glob("*.py"))


def test_there_are_raft_modules_to_check() -> None:
    names = {p.name for p in _raft_modules()}
    assert {"core.py", "log.py", "progress.py", "quorum.py", "types.py"} <= names


@pytest.mark.parametrize("path", _raft_modules(), ids=lambda p: p.name)
def test_raft_module_stays_pure(path: Path) -> None:
    found = violations(path.read_text(encoding="utf-8"), _module_name(path),
                       path.name == "__init__.py")
    assert not found, "kvstore.raft must stay pure:\n" + "\n".join(found)


# -- the checker itself catches what it is meant to ---------------------------------------


@pytest.mark.parametrize("source, expected", [
    ("import time\n", "imports time"),
    ("import os.path\n", "imports os.path"),
    ("from concurrent.futures import ThreadPoolExecutor\n", "concurrent.futures"),
    ("def f():\n    import asyncio\n", "kvstore.raft.x:2: imports asyncio"),
    ("from grpc import aio\n", "imports grpc.aio"),
    ("import lmdb, socket\n", "imports socket"),
    ("from kvstore.server import wire\n", "imports kvstore.server.wire: reaches outside"),
    ("from kvstore import storage\n", "imports kvstore.storage"),
    ("import kvstore\n", "imports kvstore: reaches outside"),
    ("from .. import client\n", "imports kvstore.client"),
    ("from random import randint\n", "imports random.randint"),
    ("import random\nrandom.seed(1)\n", "uses random.seed"),
    ("import random\ndef f():\n    return random.random()\n",
     "kvstore.raft.x:3: uses random.random"),
    ("import random as r\nx = r.randint(1, 2)\n", "uses r.randint"),
    ("import random\ng = random\n", "random (the module used as a value)"),
])
def test_the_checker_names_the_module_and_the_import(source: str, expected: str) -> None:
    found = violations(source, "kvstore.raft.x")
    assert any(expected in line for line in found), found


@pytest.mark.parametrize("source", [
    "import random\n\ndef f(rng: random.Random) -> None:\n    rng.randrange(3)\n",
    "from random import Random\n",
    "from kvstore.raft import quorum\nfrom kvstore.raft.types import Entry\n",
    "from . import quorum\nfrom .types import Entry\n",
    "from __future__ import annotations\nfrom collections.abc import Callable\n",
])
def test_the_checker_allows_pure_imports(source: str) -> None:
    assert violations(source, "kvstore.raft.x") == []
