"""Unit tests of the benchmark suite's pure parts: statistics, the load aggregation, the
result document's shape, the target verdicts and the markdown table. No servers, no
sockets, no matplotlib: these run in CI on every commit, the benchmarks themselves do not.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import replace

import pytest

from bench.__main__ import parse_args
from bench.load import aggregate, job_key
from bench.progress import Progress
from bench.report import (
    RULES,
    cpu_per_op,
    evaluate_targets,
    fmt,
    render_markdown,
    validate_result,
)
from bench.stats import (
    CDF_PERCENTILES,
    cdf_points,
    cpu_ms_per_op,
    latency_entry,
    percentile,
    ratio,
    split_evenly,
    summary_ms,
)
from bench.suite import FULL, QUICK, etcdapi_name, new_result

# --------------------------------------------------------------------------- statistics


def test_percentile_is_nearest_rank_of_observed_values() -> None:
    s = [float(x) for x in range(1, 101)]  # 1..100
    assert percentile(s, 50) == 50.0
    assert percentile(s, 90) == 90.0
    assert percentile(s, 99) == 99.0
    assert percentile(s, 99.9) == 100.0
    assert percentile(s, 100) == 100.0
    assert percentile(s, 0) == 1.0
    assert percentile([7.0], 50) == 7.0
    assert percentile([1.0, 2.0], 50) == 1.0  # nearest rank, never interpolated (1.5)
    assert math.isnan(percentile([], 50))


def test_summary_converts_seconds_to_milliseconds_and_sorts() -> None:
    s = summary_ms([0.003, 0.001, 0.002, 0.010])
    assert s["n"] == 4
    assert s["p50"] == pytest.approx(2.0)
    assert s["p99"] == pytest.approx(10.0)
    assert s["max"] == pytest.approx(10.0)
    assert set(s) == {"n", "p50", "p90", "p99", "p99.9", "max"}
    empty = summary_ms([])
    assert empty["n"] == 0 and math.isnan(empty["p50"]) and math.isnan(empty["max"])


def test_cdf_points_are_monotonic_and_end_at_the_max() -> None:
    samples = [i / 1000 for i in range(1, 1001)]
    points = cdf_points(samples)
    assert [p for p, _ in points] == list(CDF_PERCENTILES)
    values = [v for _, v in points]
    assert values == sorted(values)
    assert values[0] == pytest.approx(1.0) and values[-1] == pytest.approx(1000.0)
    assert cdf_points([]) == []
    entry = latency_entry(samples)
    assert entry["p50"] == pytest.approx(500.0) and entry["cdf_ms"] == points


def test_ratio_handles_missing_and_zero() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None
    assert ratio(1.0, None) is None
    assert ratio(1.0, 0.0) is None
    assert ratio(float("nan"), 1.0) is None


def test_split_evenly_keeps_the_total() -> None:
    assert split_evenly(16, 3) == [6, 5, 5]
    assert split_evenly(1, 1) == [1]
    assert split_evenly(256, 4) == [64, 64, 64, 64]
    for total in (1, 16, 64, 256):
        for parts in (1, 2, 3, 4):
            assert sum(split_evenly(total, parts)) == total
    with pytest.raises(ValueError):
        split_evenly(4, 0)


def test_job_keys_writes_private_reads_in_keyspace() -> None:
    assert job_key("put", 1, 2, 3, 1000) != job_key("put", 2, 1, 3, 1000)
    assert job_key("put", 0, 0, 64, 1000) == job_key("put", 0, 0, 0, 1000)  # bounded set
    for i in range(50):
        key = job_key("stale_get", 1, 5, i, 1000)
        assert key.startswith(b"seq-") and 0 <= int(key[4:]) < 1000


# --------------------------------------------------------------------------- load aggregation


def _worker(writers: int, latencies: list[float], cpu_s: float, errors: int = 0) -> dict:
    return {"proc": 0, "writers": writers, "ops": len(latencies), "errors": errors,
            "first_error": "Timeout: x" if errors else None, "latencies": latencies,
            "cpu_s": cpu_s, "cpu_wall_s": 2.0}


def test_aggregate_sums_workers_and_accounts_cpu_in_cores() -> None:
    workers = [_worker(8, [0.01] * 300, cpu_s=1.0), _worker(8, [0.02] * 100, cpu_s=0.6, errors=2),
               _worker(0, [], cpu_s=0.0)]
    e = aggregate("put", 16, workers, window_s=2.0, server_cpu_s=1.2, machine_busy_pct=90.0,
                  cores=2)
    assert e["processes"] == 2  # the idle worker does not count
    assert e["ops"] == 400 and e["ops_per_s"] == pytest.approx(200.0)
    assert e["errors"] == 2 and e["first_error"] == "Timeout: x"
    assert e["latency_ms"]["p50"] == pytest.approx(10.0)
    assert e["latency_ms"]["max"] == pytest.approx(20.0)
    assert e["client_cpu_cores"] == pytest.approx(0.8)
    assert e["server_cpu_cores"] == pytest.approx(0.6)
    assert e["machine_busy_cores"] == pytest.approx(1.8)
    assert e["other_cpu_cores"] == pytest.approx(0.4)
    # 0.6 cores for 200 ops/s: 3 ms of the servers' CPU per operation.
    assert e["server_cpu_ms_per_op"] == pytest.approx(3.0)


def test_aggregate_without_proc_readings() -> None:
    e = aggregate("stale_get", 1, [_worker(1, [0.001], 0.1)], 1.0, None, None, 2)
    assert e["server_cpu_cores"] is None and e["other_cpu_cores"] is None
    assert e["machine_busy_cores"] is None
    assert e["server_cpu_ms_per_op"] is None


def test_cpu_per_op_needs_cores_and_completed_operations() -> None:
    assert cpu_ms_per_op(1.0, 250.0) == pytest.approx(4.0)
    assert cpu_ms_per_op(None, 250.0) is None
    assert cpu_ms_per_op(1.0, 0.0) is None


# --------------------------------------------------------------------------- result document


def _lat(p50: float, p99: float) -> dict:
    """A latency entry whose p50/p99 are given (ms); the other fields are plausible."""
    entry = latency_entry([p50 / 1000] * 98 + [p99 / 1000] * 2)
    entry["p50"], entry["p99"] = p50, p99
    return entry


def _tp(op: str, level: int, ops_per_s: float) -> dict:
    window = 5.0
    return aggregate(op, level, [_worker(level, [0.005] * int(ops_per_s * window), 1.0)],
                     window, 2.0, 80.0, 2)


def _target(kind: str, nodes: int, put: tuple[float, float], lin: float, stale: float,
            ops: dict[int, float] | None,
            reads: tuple[float, float] | None = (900.0, 1800.0)) -> dict:
    """`reads`: linearizable and stale gets/s at 64 in flight (None: as through aetcd,
    no reads under load and no value sizes)."""
    t: dict = {"kind": kind, "nodes": nodes, "leader": "127.0.0.1:1",
               "endpoints": ["127.0.0.1:1"], "info": {},
               "latency": {"put": _lat(*put), "linearizable_get": _lat(lin, lin * 2),
                           "stale_get": _lat(stale, stale * 2)}}
    if ops is not None:
        t["throughput"] = {"put": [_tp("put", lvl, v) for lvl, v in ops.items()]}
    if ops is not None and reads is not None:
        t["value_sizes"] = {str(s): _lat(put[0] + s / 65536, put[1]) for s in (16, 65536)}
        t["throughput"]["linearizable_get"] = [_tp("linearizable_get", 64, reads[0])]
        t["throughput"]["stale_get"] = [_tp("stale_get", 64, reads[1])]
    return t


def _result(with_etcd: bool = True, with_etcdapi: bool = False) -> dict:
    machine = {"cores": 2, "cpu_model": "test", "python": "3.11", "grpcio": "1.85.1",
               "protobuf": "7", "etcd": "3.4.23" if with_etcd else None, "kvstore_git": "abc",
               "loadavg_at_start": [0.5, 0.4, 0.3],
               "fsync_ms": {"results_dir": {"bytes": 128, "filesystem": "ext4",
                                            "append_fsync": summary_ms([0.004]),
                                            "prealloc_fdatasync": summary_ms([0.001])}}}
    cfg = replace(FULL, value_sizes=(16, 65536), etcd=with_etcd)
    result = new_result(cfg, machine, 0.0, ["--etcd"] if with_etcd else [])
    result["targets"]["kvstore-3"] = _target("kvstore", 3, (4.0, 10.0), 1.0, 0.7,
                                             {1: 200.0, 16: 900.0, 64: 2000.0, 256: 2600.0})
    if with_etcd:
        result["targets"]["etcd-3"] = _target("etcd", 3, (5.0, 6.0), 1.2, 0.4,
                                              {1: 400.0, 16: 1500.0, 64: 1900.0, 256: 3000.0},
                                              reads=(800.0, 2000.0))
    if with_etcdapi:
        result["targets"]["kvstore-3-etcdapi"] = _target(
            "kvstore", 3, (4.6, 11.0), 1.1, 0.8, {1: 190.0, 16: 700.0, 64: 900.0, 256: 950.0},
            reads=None)
    if with_etcdapi and with_etcd:
        result["targets"]["etcd-3-aetcd"] = _target(
            "etcd", 3, (5.5, 7.0), 1.3, 0.5, {1: 380.0, 16: 1400.0, 64: 1800.0, 256: 2800.0},
            reads=None)
    result["targets"]["floor"] = _target("floor", 1, (0.5, 0.9), 0.5, 0.5,
                                         {1: 1300.0, 16: 1400.0, 64: 1400.0, 256: 1400.0})
    result["targets"]["kvstore-5"] = _target("kvstore", 5, (5.0, 12.0), 1.1, 0.6, None)
    result["elapsed_s"] = 1.0
    return result


def test_result_document_has_the_documented_shape_and_survives_json() -> None:
    result = _result()
    result["checks"] = evaluate_targets(result)
    assert validate_result(result) == []
    again = json.loads(json.dumps(result))
    assert validate_result(again) == []
    assert again["config"]["nodes"] == [3, 5]
    assert set(again["targets"]) == {"kvstore-3", "etcd-3", "floor", "kvstore-5"}
    tp = again["targets"]["kvstore-3"]["throughput"]["put"]
    assert [e["in_flight"] for e in tp] == [1, 16, 64, 256]


def test_validate_result_names_what_is_missing() -> None:
    assert validate_result({}) and "missing top-level 'schema'" in validate_result({})
    broken = _result()
    del broken["targets"]["kvstore-3"]["latency"]["put"]["p99"]
    del broken["targets"]["etcd-3"]["throughput"]["put"][0]["ops_per_s"]
    problems = validate_result(broken)
    assert "kvstore-3.latency.put lacks 'p99'" in problems
    assert "etcd-3.throughput.put[1] lacks 'ops_per_s'" in problems
    failed = _result()
    failed["targets"]["etcd-3"] = {"error": "RuntimeError: no leader"}
    assert validate_result(failed) == []


def test_validate_result_wants_cpu_per_op_from_schema_3_only() -> None:
    result = _result()
    del result["targets"]["kvstore-3"]["throughput"]["put"][0]["server_cpu_ms_per_op"]
    assert validate_result(result) == ["kvstore-3.throughput.put[1] lacks "
                                       "'server_cpu_ms_per_op'"]
    result["schema"] = "kvstore-bench/2"  # written before the field existed
    assert validate_result(result) == []


# --------------------------------------------------------------------------- targets


def test_target_verdicts() -> None:
    verdicts = {v["id"]: v for v in evaluate_targets(_result())}
    assert set(verdicts) == {r.id for r in RULES}
    assert verdicts["put-p50"]["met"] is True  # 4.0 vs 5.0
    assert verdicts["put-p50"]["ratio"] == pytest.approx(0.8)
    assert verdicts["put-p99"]["met"] is False  # 10.0 > 1.5 * 6.0
    assert verdicts["put-p99"]["ratio"] == pytest.approx(10 / 6)
    assert verdicts["lin-get-p50"]["met"] is True  # 1.0 vs 1.2
    assert verdicts["stale-get-p50"]["met"] is False  # 0.7 > 1.2 * 0.5
    assert verdicts["stale-get-p50"]["reference"] == "floor"
    assert verdicts["put-ops-64"]["met"] is True  # 2000 >= 1900: higher is better
    assert verdicts["put-ops-256"]["met"] is False  # 2600 < 3000
    assert verdicts["put-p50-5n"]["met"] is True  # 5.0 <= 1.3 * 4.0
    assert verdicts["put-p50-5n"]["target"] == "kvstore-5"
    assert verdicts["put-p50-5n"]["reference"] == "kvstore-3"
    assert verdicts["put-ops-16"]["met"] is False  # 900 < 1500
    # Servers' CPU per put at 1 in flight: 0.4 cores for 200 ops/s (2 ms) vs 400 (1 ms).
    assert verdicts["put-cpu-1"]["value"] == pytest.approx(2.0)
    assert verdicts["put-cpu-1"]["ratio"] == pytest.approx(2.0)
    assert verdicts["put-cpu-1"]["met"] is False and not verdicts["put-cpu-1"]["higher_is_better"]
    assert verdicts["lin-get-ops-64"]["met"] is True  # 900 >= 800
    assert verdicts["stale-get-ops-64"]["met"] is False  # 1800 < 2000
    assert verdicts["etcdapi-put-p50"]["met"] is None  # no aetcd run in this result
    assert "aetcd" in verdicts["etcdapi-put-p50"]["note"]


def test_etcd_api_put_p50_is_compared_with_the_native_client() -> None:
    verdicts = {v["id"]: v for v in evaluate_targets(_result(with_etcdapi=True))}
    v = verdicts["etcdapi-put-p50"]
    assert (v["target"], v["reference"]) == ("kvstore-3-etcdapi", "kvstore-3")
    assert v["ratio"] == pytest.approx(4.6 / 4.0) and v["met"] is True  # <= 1.2
    assert v["bound"] == 1.2


def test_cpu_per_op_of_an_older_result_is_computed_from_cores_and_ops() -> None:
    target = _result()["targets"]["kvstore-3"]
    assert cpu_per_op("put", 16)(target) == pytest.approx(0.4 * 1000 / 900)
    del target["throughput"]["put"][1]["server_cpu_ms_per_op"]  # a kvstore-bench/2 entry
    assert cpu_per_op("put", 16)(target) == pytest.approx(0.4 * 1000 / 900)
    assert cpu_per_op("put", 1000)(target) is None


def test_a_ratio_exactly_at_the_bound_meets_the_target() -> None:
    result = _result()
    result["targets"]["kvstore-3"]["latency"]["put"]["p50"] = 5.0  # == etcd's
    result["targets"]["kvstore-3"]["throughput"]["put"][3]["ops_per_s"] = 3000.0  # == etcd's
    verdicts = {v["id"]: v for v in evaluate_targets(result)}
    assert verdicts["put-p50"]["met"] is True
    assert verdicts["put-ops-256"]["met"] is True


def test_verdicts_without_etcd_are_not_measured_not_failed() -> None:
    verdicts = {v["id"]: v for v in evaluate_targets(_result(with_etcd=False))}
    assert verdicts["put-p50"]["met"] is None
    assert "--etcd" in verdicts["put-p50"]["note"]
    assert verdicts["stale-get-p50"]["met"] is not None  # the floor still ran


# --------------------------------------------------------------------------- table


def test_fmt() -> None:
    assert fmt(None) == "—"
    assert fmt(float("nan")) == "—"
    assert fmt(0.6543) == "0.654"
    assert fmt(12.345) == "12.35"
    assert fmt(12345.6, "ops/s") == "12,346"
    assert fmt(1.234, "x") == "1.23×"


def test_markdown_table_side_by_side_with_ratios() -> None:
    text = render_markdown(_result())
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| metric"))
    assert header == "| metric | kvstore-3 | etcd-3 | floor | kvstore/etcd | kvstore/floor |"
    row = next(line for line in lines if line.startswith("| put p50, sequential"))
    assert row == "| put p50, sequential, 16 B (ms) | 4.00 | 5.00 | 0.500 | 0.80× | 8.00× |"
    five = next(line for line in lines if line.startswith("| put p50, 5 nodes"))
    assert five.split("|")[2].strip() == "5.00" and five.split("|")[3].strip() == "—"
    ops = next(line for line in lines if line.startswith("| put ops/s, 64 in flight"))
    assert "2,000" in ops and "1,900" in ops and "1.05×" in ops
    assert any(line.startswith("| put p50, 64 KiB values") for line in lines)
    assert "### Targets" in text and "**missed**" in text and "| met |" in text
    assert "### Under load" in text
    assert "ext4" in text and "2 cores" in text
    # Every table row has as many cells as its header.
    for line in lines:
        if line.startswith("| metric"):
            width = line.count("|")
        elif line.startswith("| put") or line.startswith("| linearizable"):
            assert line.count("|") == width


def test_markdown_table_with_cpu_per_op_and_etcd_api_columns() -> None:
    text = render_markdown(_result(with_etcdapi=True))
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| metric"))
    assert header == ("| metric | kvstore-3 | etcd-3 | floor | kvstore-3-etcdapi | etcd-3-aetcd "
                      "| kvstore/etcd | kvstore/floor | kvstore/etcd (aetcd) | etcd API/native |")
    row = next(line for line in lines if line.startswith("| put p50, sequential"))
    assert row == ("| put p50, sequential, 16 B (ms) | 4.00 | 5.00 | 0.500 | 4.60 | 5.50 "
                   "| 0.80× | 8.00× | 0.84× | 1.15× |")
    cpu = next(line for line in lines if line.startswith("| servers' CPU per put, 1 in flight"))
    assert [c.strip() for c in cpu.split("|")[2:7]] == ["2.00", "1.00", "0.308", "2.11", "1.05"]
    assert any(line.startswith("| servers' CPU per stale get, 64 in flight") for line in lines)
    sizes = next(line for line in lines if line.startswith("| put p50, 64 KiB values"))
    assert [c.strip() for c in sizes.split("|")[5:7]] == ["—", "—"]  # not run through aetcd
    five = next(line for line in lines if line.startswith("| put p50, 5 nodes"))
    assert [c.strip() for c in five.split("|")[4:7]] == ["—", "—", "—"]
    load = next(line for line in lines if line.startswith("| kvstore-3-etcdapi | put | 1 |"))
    assert load.split("|")[-2].strip() == "2.11"  # servers' CPU per op, last column
    start = lines.index(header)
    table = lines[start:lines.index("", start)]
    assert all(line.count("|") == header.count("|") for line in table)
    # Without any aetcd target the table keeps its earlier columns.
    assert "etcd API/native" not in render_markdown(_result())


def test_markdown_reports_a_failed_system() -> None:
    result = _result()
    result["targets"]["etcd-3"] = {"error": "RuntimeError: etcd elected no leader"}
    text = render_markdown(result)
    assert "**etcd-3 failed**: RuntimeError: etcd elected no leader" in text


# --------------------------------------------------------------------------- cli and progress


def test_quick_preset_and_overrides() -> None:
    cfg = parse_args(["--quick"])
    assert cfg == QUICK
    assert cfg.nodes == (3,) and cfg.mode == "quick"
    cfg = parse_args(["--etcd", "--nodes", "3,5", "--levels", "1,64", "--procs", "3"])
    assert cfg.mode == "full" and cfg.etcd and cfg.nodes == (3, 5)
    assert cfg.levels == (1, 64) and cfg.processes == 3
    with pytest.raises(SystemExit):
        parse_args(["--phases", "nonsense"])
    assert QUICK.etcdapi and not parse_args(["--quick", "--no-etcdapi"]).etcdapi


def test_etcd_api_target_names() -> None:
    assert etcdapi_name("kvstore-3", "kvstore") == "kvstore-3-etcdapi"
    assert etcdapi_name("etcd-3", "etcd") == "etcd-3-aetcd"


def test_sequential_series_times_inside_an_asyncio_drivers_loop() -> None:
    from bench.suite import _series

    class Blocking:
        def __init__(self) -> None:
            self.calls: list[tuple[str, bytes, int | None]] = []

        def put(self, key: bytes, value: bytes) -> None:
            self.calls.append(("put", key, None))

        def get(self, key: bytes) -> None:
            self.calls.append(("get", key, None))

        def stale_get(self, key: bytes, follower: int) -> None:
            self.calls.append(("stale", key, follower))

        def close(self) -> None:
            pass

    class Looped(Blocking):
        def timed(self, op, n, key, value, progress):  # noqa: ANN001, ANN202
            self.calls.append((op, key(n - 1), n))
            return [0.001] * n

    blocking = Blocking()
    assert len(_series(blocking, "t", 3, "stale_get", lambda i: b"k%d" % i, b"v")) == 3
    assert blocking.calls == [("stale", b"k0", 0), ("stale", b"k1", 1), ("stale", b"k2", 2)]
    looped = Looped()
    assert _series(looped, "t", 4, "put", lambda i: b"k%d" % i, b"v") == [0.001] * 4
    assert looped.calls == [("put", b"k3", 4)]  # timed by the driver, not call by call


def test_progress_in_a_log_prints_few_lines() -> None:
    stream = io.StringIO()
    p = Progress("put", 100, stream=stream)
    for i in range(1, 101):
        p.update(i)
    p.finish("p50 1 ms")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4  # 25 %, 50 %, 75 %, done
    assert lines[-1].endswith("put: done p50 1 ms")
    assert "\r" not in stream.getvalue()


def test_profile_summary_shares_self_and_kvstore_inclusive(tmp_path) -> None:  # noqa: ANN001
    from bench import profile

    raw = tmp_path / "p.txt"
    raw.write_text(
        "<module> (kvstore/__main__.py:1);run (kvstore/server/node.py:10);"
        "commit (kvstore/storage/lmdb_store.py:380) 30\n"
        "<module> (kvstore/__main__.py:1);select (selectors.py:468) 60\n"
        "<module> (kvstore/__main__.py:1);run (kvstore/server/node.py:12);"
        "ready (kvstore/raft/rawnode.py:5) 10\n"
        "garbage line\n")
    s = profile.summarize(raw)
    assert s["samples"] == 100
    assert s["self"][:2] == [[60.0, "select (selectors.py)"], [30.0, "commit (lmdb_store.py)"]]
    incl = dict((frame, share) for share, frame in s["kvstore_inclusive"])
    assert incl["<module> (__main__.py)"] == 100.0
    assert incl["run (node.py)"] == 40.0  # counted once per stack, whatever the line
    assert profile.summarize(tmp_path / "missing.txt") == {
        "samples": 0, "self": [], "kvstore_inclusive": []}
