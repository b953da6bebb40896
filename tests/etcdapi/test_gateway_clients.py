"""HTTP clients nobody here wrote, on the client ports a `kvstore cluster up` reports
(the same ports that serve gRPC): curl as etcd's documentation shows it (put, range,
watch), over plain HTTP and over `cluster up --tls` with a client certificate, and
etcd3gw (OpenStack's etcd gateway client: put/get/delete, leases, watch)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.etcdapi.conftest import _clusters
from tests.etcdapi.etcdctl_util import terminate, wait_until
from tests.integration.cluster_util import Cluster

pytestmark = pytest.mark.integration

CURL = shutil.which("curl")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with _clusters(tmp_path_factory.mktemp("gateway")) as start:
        yield start(3)


def curl(url: str, body: str, *tls: str) -> Any:
    assert CURL is not None
    out = subprocess.run([CURL, "-sS", "-L", "--max-time", "30", *tls, url, "-X", "POST",
                          "-d", body], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


class CurlWatch:
    """`curl -N .../v3/watch` left running; a thread collects its lines; always stopped."""

    def __init__(self, url: str, body: str, *tls: str) -> None:
        assert CURL is not None
        self.proc = subprocess.Popen([CURL, "-sS", "-N", *tls, url, "-X", "POST", "-d", body],
                                     stdout=subprocess.PIPE, text=True)
        self.lines: list[Any] = []
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    def events(self) -> list[Any]:
        return [e for obj in list(self.lines) for e in obj["result"].get("events", [])]

    def __enter__(self) -> CurlWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        terminate(self.proc)
        self._thread.join(10)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def documented_session(base: str, *tls: str) -> None:
    """etcd's gateway documentation, adapted: put, range, and a watch seeing a put."""
    put = curl(f"{base}/v3/kv/put", '{"key": "Zm9v", "value": "YmFy"}', *tls)
    revision = int(put["header"]["revision"])
    got = curl(f"{base}/v3/kv/range", '{"key": "Zm9v"}', *tls)
    assert got["kvs"][0]["value"] == "YmFy" and got["count"] == "1", got
    with CurlWatch(f"{base}/v3/watch", '{"create_request": {"key": "Zm9v"}}', *tls) as watch:
        wait_until(lambda: watch.lines, 30.0, "the watch to be created")
        assert watch.lines[0]["result"]["created"] is True
        curl(f"{base}/v3/kv/put", '{"key": "Zm9v", "value": "YmF6"}', *tls)
        events = wait_until(watch.events, 30.0, "the put's watch event")
    assert events[0]["kv"]["value"] == "YmF6"
    assert int(events[0]["kv"]["mod_revision"]) > revision


def test_curl_as_etcd_documents_it(cluster: Cluster) -> None:
    if CURL is None:
        pytest.skip("curl is not installed")
    for endpoint in cluster.endpoints[:2]:  # a follower's port serves it too
        documented_session(f"http://{endpoint}")
    version = subprocess.run([CURL, "-sS", f"http://{cluster.endpoints[0]}/version"],
                             capture_output=True, text=True, timeout=60)
    assert json.loads(version.stdout) == {"etcdserver": "3.5.0", "etcdcluster": "3.5.0"}


def test_curl_over_tls_with_a_client_certificate(start_cluster: Any) -> None:
    if CURL is None:
        pytest.skip("curl is not installed")
    cluster = start_cluster(3, tls=True)
    tls = cluster.tls()
    assert tls is not None
    args = ("--cacert", str(tls.ca), "--cert", str(tls.cert), "--key", str(tls.key))
    documented_session(f"https://{cluster.endpoints[1]}", *args)
    # Plain HTTP on a TLS port is refused, not served.
    plain = subprocess.run([CURL, "-sS", "--max-time", "30", "-X", "POST", "-d", "{}",
                            f"http://{cluster.endpoints[0]}/v3/maintenance/status"],
                           capture_output=True, text=True, timeout=60)
    assert plain.returncode != 0 or "header" not in plain.stdout, plain


def test_etcd3gw(cluster: Cluster) -> None:
    etcd3gw = pytest.importorskip("etcd3gw", reason="etcd3gw is in the [test] extras")
    host, port = cluster.endpoints[2].rsplit(":", 1)
    client = etcd3gw.client(host=host, port=int(port), timeout=30)
    assert client.status()["version"] == "3.5.0"
    assert len(client.members()) == 3
    assert client.put("gw3/a", "1") is True
    assert client.get("gw3/a") == [b"1"]
    assert client.create("gw3/a", "2") is False  # a txn: only if absent
    assert client.replace("gw3/a", "1", "3") is True
    assert client.get("gw3/a") == [b"3"]

    lease = client.lease(ttl=30)
    assert client.put("gw3/leased", "x", lease=lease) is True
    assert lease.refresh() == 30
    assert 0 < lease.ttl() <= 30
    assert lease.keys() == [b"gw3/leased"]

    events_iter, cancel = client.watch_prefix("gw3/")
    seen: list[Any] = []
    reader = threading.Thread(target=lambda: seen.extend(events_iter), daemon=True)
    reader.start()
    try:
        # The watch is created asynchronously: write until an event arrives.
        wait_until(lambda: client.put("gw3/w", "w") and seen, 30.0, "an etcd3gw watch event",
                   poll=0.5)
        assert lease.revoke() is True
        wait_until(lambda: any(e.get("type") == "DELETE" and e["kv"]["key"] == b"gw3/leased"
                               for e in list(seen)), 30.0, "the lease's key deleted")
    finally:
        cancel()
        reader.join(10)
    assert client.get("gw3/leased") == []
    assert client.delete_prefix("gw3/") is True
    assert client.get_prefix("gw3/") == []



def test_membership_through_the_gateway(cluster: Cluster) -> None:
    """etcd's gateway paths for membership: add a learner (it is never started, so it
    stays a learner and promotion is refused), remove it, and move leadership."""
    import urllib.request

    from kvstore.etcdapi.members import member_id

    def post(path: str, body: dict) -> tuple[int, dict]:
        req = urllib.request.Request(f"http://{cluster.endpoints[1]}{path}",
                                     data=json.dumps(body).encode(), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    status, added = post("/v3/cluster/member/add",
                         {"peerURLs": ["http://127.0.0.1:1"], "isLearner": True})
    assert status == 200, added
    new = added["member"]
    assert new["isLearner"] is True and new["name"].startswith("node-")
    status, refused = post("/v3/cluster/member/promote", {"ID": new["ID"]})
    assert status != 200 and "in sync with leader" in refused["message"], refused
    status, removed = post("/v3/cluster/member/remove", {"ID": new["ID"]})
    assert status == 200, removed
    assert new["ID"] not in [m["ID"] for m in removed["members"]]
    leader = next(n["id"] for n in json.loads(subprocess.run(
        [sys.executable, "-m", "kvstore.cli", "cluster", "status", "--json", "--dir",
         str(cluster.dir)], capture_output=True, text=True, timeout=60).stdout)["nodes"]
        if n.get("role") == "leader")
    target = next(n for n in cluster.ids if n != leader)
    status, moved = post("/v3/maintenance/transfer-leadership",
                         {"targetID": str(member_id(target))})
    assert status == 200, moved
