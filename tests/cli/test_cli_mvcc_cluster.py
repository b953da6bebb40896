"""`kvstore get` ranges, `del`, `txn`, `compaction` run as a user runs them, against a real
3-node cluster on 127.0.0.1 (one cluster for the module; always stopped).

Each test works under its own key prefix; revisions are compared with each other (read
back through the CLI), never with fixed numbers.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from cli_util import assert_one_line_error, run_cli, running_cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


class Cli:
    """Runs `kvstore ...` against the module's cluster (its cluster.json via --dir)."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster

    def run(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:  # noqa: A002
        return run_cli(*args, "--dir", str(self.cluster.dir), cwd=self.cluster.cwd,
                       input=input)

    def ok(self, *args: str, input: str | None = None) -> str:  # noqa: A002
        result = self.run(*args, input=input)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        assert result.stderr == "", result.stderr
        return result.stdout


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    tmp = tmp_path_factory.mktemp("mvcc-cli")
    with running_cluster(tmp / "cluster", tmp) as cluster:
        yield Cli(cluster)


def put_all(cli: Cli, *pairs: tuple[str, str]) -> None:
    for key, value in pairs:
        assert cli.ok("put", key, value) == "OK\n"


def test_get_ranges_print_like_etcdctl(cli: Cli) -> None:
    put_all(cli, ("p/a", "1"), ("p/b", "2"), ("p/c", "3"), ("p0", "x"))
    assert cli.ok("get", "p/", "--prefix") == "p/a\n1\np/b\n2\np/c\n3\n"
    assert cli.ok("get", "p/a", "p/c") == "p/a\n1\np/b\n2\n"
    assert cli.ok("get", "p/b", "--from-key", "--limit", "3") == "p/b\n2\np/c\n3\np0\nx\n"
    assert cli.ok("get", "p/", "--prefix", "--keys-only") == "p/a\np/b\np/c\n"
    assert cli.ok("get", "p/", "--prefix", "--count-only") == "3\n"
    assert cli.ok("get", "p/", "--prefix", "--order", "DESCEND", "--limit", "1") == "p/c\n3\n"
    put_all(cli, ("p/a", "1b"))
    assert cli.ok("get", "p/", "--prefix", "--sort-by", "MODIFY", "--order", "descend",
                  "--keys-only") == "p/a\np/c\np/b\n"
    assert cli.ok("get", "p/none", "--prefix") == ""  # an empty range is not an error


def test_get_json_keeps_the_contract_and_adds_revisions(cli: Cli) -> None:
    put_all(cli, ("j/k", "v1"), ("j/k", "v2"))
    doc = json.loads(cli.ok("get", "j/k", "--json"))
    assert {"key", "value", "found", "node", "applied_index"} <= doc.keys()
    assert (doc["key"], doc["value"], doc["found"], doc["version"]) == ("j/k", "v2", True, 2)
    assert doc["create_revision"] < doc["mod_revision"] <= doc["revision"]
    # --rev: the key as it was before its second write.
    assert cli.ok("get", "j/k", "--rev", str(doc["mod_revision"] - 1)) == "v1\n"
    ranged = json.loads(cli.ok("get", "j/", "--prefix", "--json"))
    assert ranged["count"] == 1 and ranged["more"] is False
    assert ranged["revision"] >= doc["mod_revision"] and ranged["node"]
    (kv,) = ranged["kvs"]
    assert (kv["key"], kv["value"], kv["mod_revision"], kv["version"]) == (
        "j/k", "v2", doc["mod_revision"], 2)
    missing = cli.run("get", "j/missing", "--json")
    assert missing.returncode == 1 and json.loads(missing.stdout)["found"] is False


def test_delete_and_del(cli: Cli) -> None:
    put_all(cli, ("d/a", "1"), ("d/b", "2"), ("d/c", "3"))
    assert cli.ok("delete", "d/c") == "1\n"
    assert cli.ok("delete", "d/c") == "0\n"
    assert cli.ok("del", "d/", "--prefix", "--prev-kv") == "2\nd/a\n1\nd/b\n2\n"
    assert cli.ok("del", "d/", "--prefix") == "0\n"


def test_txn_reads_etcdctl_text(cli: Cli) -> None:
    put_all(cli, ("x/k", "old"))
    mod = json.loads(cli.ok("get", "x/k", "--json"))["mod_revision"]
    text = (f'mod("x/k") = "{mod}"\nvalue("x/k") = "old"\n\n'
            'put x/k "new value"\nget x/k\n\nget x/k\n\n')
    assert cli.ok("txn", input=text) == "SUCCESS\n\nOK\n\nx/k\nnew value\n"
    # The same text again: the compare fails now, the failure branch runs.
    assert cli.ok("txn", input=text) == "FAILURE\n\nx/k\nnew value\n"
    doc = json.loads(cli.ok("txn", "--json", input='version("x/none") = "0"\n\nput x/n 1\n'))
    assert doc["succeeded"] is True and doc["responses"] == [{"put": {"prev_kv": None}}]
    out = cli.ok("txn", input='\ndel x/ --prefix --prev-kv\n\n')
    assert out == "SUCCESS\n\n2\nx/k\nnew value\nx/n\n1\n"


def test_compaction(cli: Cli) -> None:
    put_all(cli, ("c/k", "1"), ("c/k", "2"))
    doc = json.loads(cli.ok("get", "c/k", "--json"))
    assert cli.ok("compaction", str(doc["revision"])) == f"compacted revision {doc['revision']}\n"
    old = cli.run("get", "c/k", "--rev", str(doc["mod_revision"] - 1))
    assert_one_line_error(old, "required revision has been compacted")
    again = cli.run("compaction", str(doc["mod_revision"] - 1))
    assert_one_line_error(again, "compacted")
    future = cli.run("get", "c/", "--prefix", "--rev", str(doc["revision"] + 1000))
    assert_one_line_error(future, "future revision")


@pytest.mark.parametrize(("args", "stdin", "needles"), [
    (("txn",), 'mod("k") = x\n\n', ("malformed comparison",)),
    (("txn",), '\nwatch k\n', ("unknown command watch",)),
    (("get", "k", "z", "--prefix"), None, ("at most one",)),
    (("get", "k", "--sort-by", "size"), None, ("--sort-by",)),
    (("compaction", "0"), None, ("REVISION",)),
])
def test_usage_errors_are_one_line(cli: Cli, args: tuple[str, ...], stdin: str | None,
                                   needles: tuple[str, ...]) -> None:
    assert_one_line_error(cli.run(*args, input=stdin), *needles)
