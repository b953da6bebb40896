"""Trust on the wire, on real processes: separate client and peer ports, the cluster id,
and mutual TLS (`kvstore cluster up --tls`).

Two clusters are shared by the tests that only look (one plaintext, one TLS); the test
that replaces a node with a stranger gets a cluster of its own.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cluster_util import (
    Cluster,
    cli_env,
    run_cli,
    start_local_cluster,
    stop_local_cluster,
    wait_until,
)

from kvstore.client import AsyncKVClient, KVClient, KVError, TLSConfig
from kvstore.cluster.certs import make_ca, make_leaf
from kvstore.cluster.process import wait_gone
from kvstore.raft.types import Message, MessageType
from kvstore.server.wire import message_to_pb
from kvstore.v1 import admin_pb2, admin_pb2_grpc, kv_pb2, kv_pb2_grpc, raft_pb2, raft_pb2_grpc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _shared(tmp_path_factory: pytest.TempPathFactory, name: str, tls: bool) -> Iterator[Cluster]:
    cwd = tmp_path_factory.mktemp(name)
    try:
        cluster = start_local_cluster(cwd / "c", cwd, tls=tls)
    except AssertionError:
        stop_local_cluster(Cluster(cwd / "c", 0, 3, cwd))
        raise
    try:
        yield cluster
    finally:
        survivors = stop_local_cluster(cluster)
    assert not survivors, f"node processes survived teardown: {survivors}"


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A plaintext 3-node cluster; tests must leave it as they found it."""
    yield from _shared(tmp_path_factory, "plain", tls=False)


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A `cluster up --tls` 3-node cluster; tests must leave it as they found it."""
    yield from _shared(tmp_path_factory, "secure", tls=True)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvstore: "), result.stderr
    return lines[0]


def _log(cluster: Cluster, node_id: str) -> str:
    return (cluster.dir / f"{node_id}.log").read_text(errors="replace")


# --------------------------------------------------------------------------- ports and ids


def test_cluster_up_chooses_both_ports_and_records_them(plain: Cluster) -> None:
    state = plain.state()
    assert "tls" not in state
    cluster_id = state["cluster_id"]
    assert cluster_id and len(cluster_id) == 16
    for i, node in enumerate(state["nodes"]):
        assert node["id"] == f"n{i + 1}"
        assert node["address"] == f"127.0.0.1:{plain.base_port + i}"
        assert node["peer_address"] == f"127.0.0.1:{plain.base_port + 100 + i}"
        args = node["serve_args"]
        assert args[args.index("--listen-peer") + 1] == node["peer_address"]
        assert args[args.index("--cluster-id") + 1] == cluster_id
        # The cluster id is stored in each data dir at first start.
        assert (Path(node["data_dir"]) / "CLUSTER_ID").read_text().strip() == cluster_id
    args = state["nodes"][0]["serve_args"]
    assert args[args.index("--peers") + 1] == (f"n2={plain.peer_address('n2')},"
                                               f"n3={plain.peer_address('n3')}")
    assert [n["address"] for n in plain.status()] == plain.endpoints


def test_admin_and_raft_are_served_on_the_peer_port_only(plain: Cluster) -> None:
    client_port, peer_port = plain.address("n1"), plain.peer_address("n1")
    with grpc.insecure_channel(client_port) as channel:
        with pytest.raises(grpc.RpcError) as admin:
            admin_pb2_grpc.AdminStub(channel).Digest(admin_pb2.DigestRequest(), timeout=5)
        with pytest.raises(grpc.RpcError) as raft:
            raft_pb2_grpc.RaftPeerStub(channel).Stream(iter([]), timeout=5)
    assert admin.value.code() == raft.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with grpc.insecure_channel(peer_port) as channel:
        with pytest.raises(grpc.RpcError) as kv:
            kv_pb2_grpc.KVStub(channel).Status(kv_pb2.StatusRequest(), timeout=5)
        digest = admin_pb2_grpc.AdminStub(channel).Digest(admin_pb2.DigestRequest(), timeout=5)
    assert kv.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert digest.node_id == "n1"


def _vote_for(candidate: str, term: int) -> raft_pb2.MessageBatch:
    """What a forged vote for ``candidate`` would look like."""
    msg = Message(MessageType.VOTE_RESP, src="intruder", dst=candidate, term=term)
    return raft_pb2.MessageBatch(messages=[message_to_pb(msg)])


REAL = "(the cluster's own id)"


@pytest.mark.parametrize(
    ("metadata", "code", "needle"),
    [
        ([("kvstore-node-id", "intruder"), ("kvstore-cluster-id", REAL)],
         grpc.StatusCode.PERMISSION_DENIED, "refused peer stream from intruder"),
        ([("kvstore-node-id", "n2"), ("kvstore-cluster-id", "another-cluster")],
         grpc.StatusCode.FAILED_PRECONDITION, "cluster id another-cluster"),
        ([], grpc.StatusCode.FAILED_PRECONDITION, "cluster id (none)"),
    ],
    ids=["unknown-sender", "other-cluster-id", "no-identity"],
)
def test_the_peer_port_refuses_strangers(
    plain: Cluster, metadata: list[tuple[str, str]], code: grpc.StatusCode, needle: str
) -> None:
    """A forged vote (term 10^6) from a non-member, and a snapshot, sent to the leader's
    peer port: refused before the core sees them, with one line in the leader's log."""
    leader = plain.leader()
    real = plain.state()["cluster_id"]
    metadata = [(k, real if v == REAL else v) for k, v in metadata]
    with grpc.insecure_channel(plain.peer_address(leader)) as channel:
        stub = raft_pb2_grpc.RaftPeerStub(channel)
        with pytest.raises(grpc.RpcError) as stream:
            stub.Stream(iter([_vote_for(leader, 10**6)]), metadata=metadata, timeout=5)
        chunk = raft_pb2.SnapshotChunk(term=10**6, data=b"x" * 100, **{"from": "intruder"})
        with pytest.raises(grpc.RpcError) as snapshot:
            stub.InstallSnapshot(iter([chunk]), metadata=metadata, timeout=5)
    assert stream.value.code() == snapshot.value.code() == code
    wait_until(lambda: needle in _log(plain, leader), 10, f"the refusal in {leader}'s log")
    # Nothing of it reached the core: the cluster serves, in a sane term.
    with plain.client() as client:
        client.put("after-stranger", "ok")
        assert client.get("after-stranger") == b"ok"
    assert all(n["term"] < 10**6 for n in plain.status())


def _stale(address: str, key: str, tls: TLSConfig | None = None) -> bytes | None:
    try:
        with KVClient([address], timeout=2.0, tls=tls) as client:
            return client.get(key, stale=True)
    except KVError:
        return None


def test_a_node_of_another_cluster_is_refused_and_the_cluster_keeps_serving(
    cluster: Cluster, tmp_path: Path
) -> None:
    """n3 is stopped and a node of another cluster starts in its place, on its ports and
    with its id: both sides refuse each other's streams and say so in their logs."""
    real_id = cluster.state()["cluster_id"]
    cluster.ok("cluster", "stop", "n3")
    # n3's own data dir will not start under another cluster id either.
    n3 = next(n for n in cluster.state()["nodes"] if n["id"] == "n3")
    args = n3["serve_args"]
    wrong = [*args[: args.index("--cluster-id") + 1], "stranger-cluster",
             *args[args.index("--cluster-id") + 2:]]
    refused = run_cli("serve", *wrong, cwd=tmp_path, timeout=60)
    assert refused.returncode != 0
    assert f"belongs to cluster {real_id}, not stranger-cluster" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr

    peers = f"n1={cluster.peer_address('n1')},n2={cluster.peer_address('n2')}"
    log_path = tmp_path / "stranger.log"
    with open(log_path, "wb") as log:
        stranger = subprocess.Popen(
            [sys.executable, "-m", "kvstore.cli", "serve", "--id", "n3",
             "--listen", cluster.address("n3"), "--listen-peer", cluster.peer_address("n3"),
             "--peers", peers, "--cluster-id", "stranger-cluster",
             "--data-dir", str(tmp_path / "stranger")],
            stdout=log, stderr=subprocess.STDOUT, env=cli_env(), cwd=tmp_path,
        )  # fmt: skip
    try:
        def stranger_status() -> kv_pb2.StatusResponse | None:
            with grpc.insecure_channel(cluster.address("n3")) as channel:
                return kv_pb2_grpc.KVStub(channel).Status(kv_pb2.StatusRequest(), timeout=2)

        wait_until(stranger_status, 30, "the stranger to serve")
        for node in ("n1", "n2"):
            wait_until(lambda node=node: "cluster id stranger-cluster" in _log(cluster, node),
                       30, f"{node} to refuse the stranger")
        wait_until(lambda: f"cluster id {real_id}, this node (n3)" in log_path.read_text(), 30,
                   "the stranger to refuse the cluster's leader")
        assert "refused our stream" in log_path.read_text()  # and it says it was refused
        with KVClient(cluster.endpoints[:2], timeout=10) as client:
            for i in range(20):
                client.put(f"with-stranger-{i}", str(i))
            assert client.get("with-stranger-19") == b"19"
        status = stranger_status()
        assert status is not None and status.role != "leader" and status.leader_id == ""
        assert status.commit_index == 0
    finally:
        stranger.terminate()
        try:
            stranger.wait(timeout=15)
        except subprocess.TimeoutExpired:
            stranger.kill()
            stranger.wait()
    wait_gone(stranger.pid, str(tmp_path / "stranger"), 5)
    # The real n3 comes back and catches up.
    cluster.ok("cluster", "start", "n3")
    wait_until(lambda: _stale(cluster.address("n3"), "with-stranger-19") == b"19", 30,
               "n3 to catch up")


# --------------------------------------------------------------------------- TLS


def test_cli_works_over_mutual_tls_with_nothing_but_cluster_json(secure: Cluster) -> None:
    state = secure.state()
    assert set(state["tls"]) == {"ca", "cert", "key"}
    assert all(Path(p).is_file() for p in state["tls"].values())
    assert "--client-cert-auth" in state["nodes"][0]["serve_args"]
    assert secure.ok("put", "tls-key", "tls-value") == "OK\n"
    assert secure.ok("get", "tls-key") == "tls-value\n"
    assert secure.ok("delete", "tls-key") == "1\n"
    nodes = json.loads(secure.ok("status", "--json"))["nodes"]
    assert all(n["reachable"] for n in nodes) and sum(n["role"] == "leader" for n in nodes) == 1
    assert [n["reachable"] for n in secure.status()] == [True] * 3  # cluster status
    # Stopping and starting a node goes through TLS too (start waits for its Status), and
    # the restarted node catches up over the peers' mutual TLS.
    follower = next(n for n in secure.ids if n != secure.leader())
    secure.ok("cluster", "stop", follower)
    assert secure.ok("put", "while-stopped", "caught-up") == "OK\n"
    secure.ok("cluster", "start", follower)
    wait_until(lambda: _stale(secure.address(follower), "while-stopped", secure.tls())
               == b"caught-up", 30, f"{follower} to catch up")


def test_cli_takes_etcdctls_tls_flags_and_their_environment(secure: Cluster) -> None:
    tls = secure.state()["tls"]
    endpoints = ",".join(secure.endpoints)
    flags = ["--endpoints", endpoints, "--cacert", tls["ca"], "--cert", tls["cert"],
             "--key", tls["key"]]
    assert secure.ok("put", "flagged", "yes", *flags) == "OK\n"
    env = cli_env()
    env.update(KVSTORE_ENDPOINTS=endpoints, KVSTORE_CACERT=tls["ca"], KVSTORE_CERT=tls["cert"],
               KVSTORE_KEY=tls["key"])
    result = subprocess.run([sys.executable, "-m", "kvstore.cli", "get", "flagged"],
                            cwd=secure.cwd, env=env, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, "yes\n", "")


async def _async_round_trip(endpoints: list[str], tls: TLSConfig) -> bytes | None:
    async with AsyncKVClient(endpoints, timeout=10, tls=tls) as client:
        await asyncio.gather(*(client.put(f"async-{i}", str(i)) for i in range(10)))
        return await client.get("async-9")


def test_kvclient_and_async_client_with_tlsconfig(secure: Cluster) -> None:
    tls = secure.tls()
    assert tls is not None
    with KVClient(secure.endpoints, timeout=10, tls=tls) as client:
        client.put("sync-key", "v")
        assert client.get("sync-key") == b"v"
        assert client.cas("sync-key", "v", "w")
        assert [s.reachable for s in client.status()] == [True] * 3
    assert asyncio.run(_async_round_trip(secure.endpoints, tls)) == b"9"


def test_a_plaintext_client_is_refused(secure: Cluster) -> None:
    line = one_error_line(secure.cli("get", "k", "--endpoints", secure.address("n1"),
                                     "--timeout", "2"))
    assert "may require TLS" in line and "--cacert" in line
    with KVClient([secure.address("n1")], timeout=1) as client, pytest.raises(KVError) as info:
        client.get("k")
    assert "may require TLS" in str(info.value)


def test_a_client_that_does_not_trust_the_nodes_ca_is_refused(
    secure: Cluster, tmp_path: Path
) -> None:
    other_ca, other_key = make_ca("someone else's CA", tmp_path, "other-ca")
    tls = secure.state()["tls"]
    line = one_error_line(secure.cli(
        "get", "k", "--endpoints", secure.address("n1"), "--timeout", "2",
        "--cacert", other_ca, "--cert", tls["cert"], "--key", tls["key"]))
    assert "CERTIFICATE_VERIFY_FAILED" in line
    # ...and a client certificate from another CA is refused by the node.
    make_leaf(other_ca, other_key, "kvstore-client", tmp_path / "c.crt", tmp_path / "c.key",
              hosts=[], server=False)
    stranger = TLSConfig(ca=tls["ca"], cert=tmp_path / "c.crt", key=tmp_path / "c.key")
    with KVClient([secure.address("n1")], timeout=1, tls=stranger) as client:
        with pytest.raises(KVError) as info:
            client.put("k", "v")
    assert "may not trust this client certificate" in str(info.value)


def test_a_client_without_a_certificate_is_refused(secure: Cluster) -> None:
    ca = secure.state()["tls"]["ca"]
    line = one_error_line(secure.cli("put", "k", "v", "--endpoints", secure.address("n2"),
                                     "--cacert", ca, "--timeout", "2"))
    assert "may require a client certificate" in line


def test_the_client_certificate_opens_no_peer_port(secure: Cluster) -> None:
    """Clients and peers have separate CAs: the certificate every application gets cannot
    reach Raft or the Admin service; a node's peer certificate can."""
    tls_dir = secure.dir / "tls"

    def creds(cert: str, ca: str) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            (tls_dir / ca).read_bytes(), (tls_dir / f"{cert}.key").read_bytes(),
            (tls_dir / f"{cert}.crt").read_bytes())

    def digest(cert: str, ca: str) -> str:
        with grpc.secure_channel(secure.peer_address("n1"), creds(cert, ca)) as channel:
            return admin_pb2_grpc.AdminStub(channel).Digest(admin_pb2.DigestRequest(),
                                                            timeout=3).node_id

    assert digest("n2-peer", "peer-ca.crt") == "n1"
    for ca in ("peer-ca.crt", "ca.crt"):
        with pytest.raises(grpc.RpcError) as info:
            digest("client", ca)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    with grpc.secure_channel(secure.address("n1"), creds("client", "ca.crt")) as channel:
        with pytest.raises(grpc.RpcError) as admin:
            admin_pb2_grpc.AdminStub(channel).Digest(admin_pb2.DigestRequest(), timeout=3)
    assert admin.value.code() == grpc.StatusCode.UNIMPLEMENTED



def test_forged_messages_under_a_members_id_are_dropped_and_the_node_keeps_serving(
    plain: Cluster,
) -> None:
    """The audit's attacks, replayed on a real leader's peer port by someone who knows the
    cluster id and a member's id (plaintext: nothing authenticates them): a heartbeat with
    term 2^64-1, an acknowledgement far past the log, a SNAP with no snapshot behind it, a
    vote from a non-member, a message of an unknown type. Each is dropped and logged, the
    stream stays open (its answer is an ordinary ack), and the node keeps leading and
    serving in a sane term."""
    leader = plain.leader()
    member = next(n for n in ("n1", "n2", "n3") if n != leader)
    before = {n["id"]: n["term"] for n in plain.status()}
    forged = [
        Message(MessageType.HEARTBEAT, member, leader, 2**64 - 1),
        Message(MessageType.APP_RESP, member, leader, before[leader], index=2**61),
        Message(MessageType.SNAP, member, leader, before[leader], index=10**9, log_term=1),
        Message(MessageType.VOTE_RESP, "intruder", leader, before[leader] + 1),
    ]
    batch = raft_pb2.MessageBatch(messages=[message_to_pb(m) for m in forged])
    unknown = raft_pb2.Message(to=leader, term=before[leader], **{"from": member})
    unknown.type = 99  # type: ignore[assignment]  # an enum value no release defines
    batch.messages.append(unknown)
    metadata = [("kvstore-node-id", member), ("kvstore-cluster-id", plain.state()["cluster_id"])]
    with grpc.insecure_channel(plain.peer_address(leader)) as channel:
        ack = raft_pb2_grpc.RaftPeerStub(channel).Stream(iter([batch, batch]), metadata=metadata,
                                                         timeout=5)
    assert isinstance(ack, raft_pb2.StreamAck)  # the stream was not torn down
    wait_until(lambda: "term out of range" in _log(plain, leader)
               or "refused HEARTBEAT" in _log(plain, leader), 10,
               f"the refusal of the absurd term in {leader}'s log")
    text = _log(plain, leader)
    assert "refused APP_RESP" in text and "refused SNAP" in text, text[-3000:]
    with plain.client() as client:
        client.put("after-forgery", "ok")
        assert client.get("after-forgery") == b"ok"
    after = {n["id"]: (n["term"], n["role"]) for n in plain.status()}
    assert after[leader] == (before[leader], "leader")
    assert all(term < 2**40 for term, _ in after.values())
