"""Turn a result document into the side-by-side markdown table, the target verdicts and
the PNG plots. `python -m bench.report RESULT.json` redoes all three from a saved run.

Pure except `write_plots` (matplotlib, optional: the `bench` extra) and `main`, so the
table and the verdicts are unit-tested (tests/bench) without servers.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stats import cpu_ms_per_op, ratio

Getter = Callable[[dict[str, Any]], float | None]
DASH = "—"


# --------------------------------------------------------------------------- getters


def latency(op: str, stat: str, section: str = "latency") -> Getter:
    """Sequential latency statistic (ms) of an operation."""
    def get(target: dict[str, Any]) -> float | None:
        value = target.get(section, {}).get(op, {}).get(stat)
        return None if value is None or _nan(value) else float(value)
    return get


def size_latency(size: int, stat: str) -> Getter:
    """Sequential put latency statistic (ms) at one value size."""
    return latency(str(size), stat, section="value_sizes")


def loaded(op: str, in_flight: int, key: str = "ops_per_s") -> Getter:
    """A field of the throughput entry of `op` at `in_flight` ('p50'/'p99' read latency_ms)."""
    def get(target: dict[str, Any]) -> float | None:
        for entry in target.get("throughput", {}).get(op, []):
            if entry.get("in_flight") == in_flight:
                value = entry["latency_ms"].get(key) if key in ("p50", "p99") else entry.get(key)
                return None if value is None or _nan(value) else float(value)
        return None
    return get


def cpu_per_op(op: str, in_flight: int) -> Getter:
    """The servers' CPU per operation (ms) of `op` at `in_flight`: servers' cores over the
    window × 1000 / ops/s (computed when an older result lacks the field)."""
    def get(target: dict[str, Any]) -> float | None:
        for entry in target.get("throughput", {}).get(op, []):
            if entry.get("in_flight") == in_flight:
                value = entry.get("server_cpu_ms_per_op")
                if value is None:
                    value = cpu_ms_per_op(entry.get("server_cpu_cores"), entry.get("ops_per_s"))
                return None if value is None or _nan(value) else float(value)
        return None
    return get


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


# --------------------------------------------------------------------------- roles


@dataclass(frozen=True)
class Roles:
    """Which target of a result fills which column."""

    kvstore: str
    etcd: str
    floor: str = "floor"
    kvstore_etcdapi: str = ""  # the main kvstore cluster through the etcd API with aetcd
    etcd_aetcd: str = ""  # etcd through aetcd


def roles_of(result: dict[str, Any]) -> Roles:
    main = result["config"]["nodes"][0]
    return Roles(kvstore=f"kvstore-{main}", etcd=f"etcd-{main}",
                 kvstore_etcdapi=f"kvstore-{main}-etcdapi", etcd_aetcd=f"etcd-{main}-aetcd")


def _target(result: dict[str, Any], name: str) -> dict[str, Any] | None:
    t = result.get("targets", {}).get(name)
    return None if t is None or "error" in t else t


def _value(result: dict[str, Any], name: str, getter: Getter) -> float | None:
    t = _target(result, name)
    return None if t is None else getter(t)


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class TargetRule:
    """One goal from the issue: value(target) / value(reference) compared with a bound."""

    id: str
    description: str
    target: str  # a Roles field name or a literal target name such as "kvstore-5"
    reference: str
    getter: Getter
    bound: float
    higher_is_better: bool = False
    missing_hint: str = ""


ETCD_HINT = "run with --etcd"
READS_HINT = "run with --etcd and 64 in --read-levels"
AETCD_HINT = "the etcd API runs need aetcd (pip install -e '.[bench]') and no --no-etcdapi"

RULES: tuple[TargetRule, ...] = (
    TargetRule("put-p50", "sequential put p50 ≤ etcd p50", "kvstore", "etcd",
               latency("put", "p50"), 1.0, missing_hint=ETCD_HINT),
    TargetRule("put-p99", "sequential put p99 ≤ 1.5× etcd p99", "kvstore", "etcd",
               latency("put", "p99"), 1.5, missing_hint="run with --etcd"),
    TargetRule("lin-get-p50", "linearizable get p50 ≤ etcd p50", "kvstore", "etcd",
               latency("linearizable_get", "p50"), 1.0, missing_hint="run with --etcd"),
    TargetRule("stale-get-p50", "stale get p50 ≤ 1.2× floor p50", "kvstore", "floor",
               latency("stale_get", "p50"), 1.2, missing_hint="the floor was not run"),
    TargetRule("put-ops-16", "put throughput at 16 in flight ≥ etcd", "kvstore", "etcd",
               loaded("put", 16), 1.0, higher_is_better=True, missing_hint=ETCD_HINT),
    TargetRule("put-ops-64", "put throughput at 64 in flight ≥ etcd", "kvstore", "etcd",
               loaded("put", 64), 1.0, higher_is_better=True, missing_hint="run with --etcd"),
    TargetRule("put-ops-256", "put throughput at 256 in flight ≥ etcd", "kvstore", "etcd",
               loaded("put", 256), 1.0, higher_is_better=True, missing_hint="run with --etcd"),
    TargetRule("put-cpu-1", "servers' CPU per put at 1 in flight ≤ etcd's", "kvstore",
               "etcd", cpu_per_op("put", 1), 1.0, missing_hint=ETCD_HINT),
    TargetRule("lin-get-ops-64", "linearizable get throughput at 64 in flight ≥ etcd "
               "(reads keep their lead)", "kvstore", "etcd", loaded("linearizable_get", 64),
               1.0, higher_is_better=True, missing_hint=READS_HINT),
    TargetRule("stale-get-ops-64", "stale get throughput at 64 in flight ≥ etcd "
               "(reads keep their lead)", "kvstore", "etcd", loaded("stale_get", 64), 1.0,
               higher_is_better=True, missing_hint=READS_HINT),
    TargetRule("put-p50-5n", "5-node put p50 ≤ 1.3× 3-node p50", "kvstore-5", "kvstore-3",
               latency("put", "p50"), 1.3, missing_hint="the 5-node cluster runs in the full "
               "suite (--nodes 3,5)"),
    TargetRule("etcdapi-put-p50", "etcd API (aetcd) put p50 ≤ 1.2× native client put p50",
               "kvstore_etcdapi", "kvstore", latency("put", "p50"), 1.2,
               missing_hint=AETCD_HINT),
)


def _resolve(roles: Roles, name: str) -> str:
    return getattr(roles, name, name)


def evaluate_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Verdict per rule: value, reference, ratio, bound, and met (None when not measured)."""
    roles = roles_of(result)
    verdicts = []
    for rule in RULES:
        target, reference = _resolve(roles, rule.target), _resolve(roles, rule.reference)
        value = _value(result, target, rule.getter)
        ref = _value(result, reference, rule.getter)
        r = ratio(value, ref)
        met = None if r is None else (r >= rule.bound if rule.higher_is_better
                                      else r <= rule.bound)
        verdicts.append({
            "id": rule.id, "description": rule.description,
            "target": target, "reference": reference,
            "value": value, "reference_value": ref, "ratio": r, "bound": rule.bound,
            "higher_is_better": rule.higher_is_better, "met": met,
            "note": None if r is not None else f"not measured: {rule.missing_hint}",
        })
    return verdicts


# --------------------------------------------------------------------------- table


def fmt(value: float | None, unit: str = "ms") -> str:
    """A cell: ms with 2 decimals (3 below 1 ms), ops/s as an integer, a ratio as 1.23×."""
    if value is None or _nan(value):
        return DASH
    if unit == "ops/s":
        return f"{value:,.0f}"
    if unit == "x":
        return f"{value:.2f}×"
    if unit == "cores":
        return f"{value:.2f}"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}"


def metric_rows(result: dict[str, Any]) -> list[tuple[str, str, Getter, str | None]]:
    """(label, unit, getter, kvstore target override) for every row of the main table."""
    cfg = result["config"]
    size = cfg["value_size"]
    rows: list[tuple[str, str, Getter, str | None]] = []
    for stat in ("p50", "p90", "p99", "p99.9", "max"):
        rows.append((f"put {stat}, sequential, {size} B (ms)", "ms", latency("put", stat), None))
    for n in cfg["nodes"][1:]:
        for stat in ("p50", "p99"):
            rows.append((f"put {stat}, {n} nodes (ms)", "ms", latency("put", stat),
                         f"{n}"))
    for op, label in (("linearizable_get", "linearizable get"), ("stale_get", "stale get")):
        for stat in ("p50", "p99"):
            rows.append((f"{label} {stat} (ms)", "ms", latency(op, stat), None))
    for value_size in cfg["value_sizes"]:
        for stat in ("p50", "p99"):
            rows.append((f"put {stat}, {_bytes(value_size)} values (ms)", "ms",
                         size_latency(value_size, stat), None))
    for level in cfg["levels"]:
        rows.append((f"put ops/s, {level} in flight", "ops/s", loaded("put", level), None))
    for level in cfg["read_levels"]:
        for op, label in (("linearizable_get", "linearizable get"), ("stale_get", "stale get")):
            rows.append((f"{label} ops/s, {level} in flight", "ops/s", loaded(op, level), None))
    for level in cfg["levels"]:
        rows.append((f"servers' CPU per put, {level} in flight (ms)", "ms",
                     cpu_per_op("put", level), None))
    for level in cfg["read_levels"]:
        for op, label in (("linearizable_get", "linearizable get"), ("stale_get", "stale get")):
            rows.append((f"servers' CPU per {label}, {level} in flight (ms)", "ms",
                         cpu_per_op(op, level), None))
    return rows


def _bytes(n: int) -> str:
    return f"{n // 1024} KiB" if n >= 1024 and n % 1024 == 0 else f"{n} B"


def table_columns(result: dict[str, Any]) -> tuple[list[str], list[tuple[str, str, str]]]:
    """The main table's system columns (Roles fields) and its ratio columns (header,
    numerator, denominator): the etcd API (aetcd) ones only when the run has them."""
    systems = ["kvstore", "etcd", "floor"]
    ratios = [("kvstore/etcd", "kvstore", "etcd"), ("kvstore/floor", "kvstore", "floor")]
    roles = roles_of(result)
    targets = result.get("targets", {})
    if roles.kvstore_etcdapi in targets or roles.etcd_aetcd in targets:
        systems += ["kvstore_etcdapi", "etcd_aetcd"]
        ratios += [("kvstore/etcd (aetcd)", "kvstore_etcdapi", "etcd_aetcd"),
                   ("etcd API/native", "kvstore_etcdapi", "kvstore")]
    return systems, ratios


def _main_table(result: dict[str, Any]) -> list[str]:
    roles = roles_of(result)
    systems, ratios = table_columns(result)
    lines = ["| metric | " + " | ".join(getattr(roles, s) for s in systems) + " | "
             + " | ".join(header for header, _, _ in ratios) + " |",
             "|---|" + "---:|" * (len(systems) + len(ratios))]
    for label, unit, getter, nodes in metric_rows(result):
        if nodes:  # another cluster size: kvstore and etcd of that size only
            names = {"kvstore": f"kvstore-{nodes}", "etcd": f"etcd-{nodes}"}
        else:
            names = {s: getattr(roles, s) for s in systems}
        values = {s: _value(result, names[s], getter) if s in names else None
                  for s in systems}
        if all(v is None for v in values.values()):
            continue
        cells = [fmt(values[s], unit) for s in systems]
        cells += [fmt(ratio(values[a], values[b]), "x") for _, a, b in ratios]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _targets_table(verdicts: list[dict[str, Any]]) -> list[str]:
    lines = ["| target | kvstore | reference | ratio | bound | result |",
             "|---|---:|---:|---:|---:|---|"]
    for v in verdicts:
        unit = "ops/s" if v["higher_is_better"] else "ms"
        bound = ("≥ " if v["higher_is_better"] else "≤ ") + f"{v['bound']:.2f}×"
        verdict = {True: "met", False: "**missed**", None: v["note"]}[v["met"]]
        lines.append(f"| {v['description']} | {fmt(v['value'], unit)} ({v['target']}) | "
                     f"{fmt(v['reference_value'], unit)} ({v['reference']}) | "
                     f"{fmt(v['ratio'], 'x')} | {bound} | {verdict} |")
    return lines


def _load_table(result: dict[str, Any]) -> list[str]:
    lines = ["| system | operation | in flight | client procs | ops/s | p50 ms | p99 ms | errors "
             "| client CPU | servers CPU | other CPU | servers' CPU per op (ms) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    count = 0
    for name, t in result.get("targets", {}).items():
        for op, entries in (t.get("throughput") or {}).items():
            for e in entries:
                count += 1
                lines.append(
                    f"| {name} | {op} | {e['in_flight']} | {e['processes']} | "
                    f"{fmt(e['ops_per_s'], 'ops/s')} | {fmt(e['latency_ms']['p50'])} | "
                    f"{fmt(e['latency_ms']['p99'])} | {e['errors']} | "
                    f"{fmt(e['client_cpu_cores'], 'cores')} | "
                    f"{fmt(e['server_cpu_cores'], 'cores')} | "
                    f"{fmt(e['other_cpu_cores'], 'cores')} | "
                    f"{fmt(cpu_per_op(op, e['in_flight'])(t))} |")
    return lines if count else []


def machine_line(result: dict[str, Any]) -> str:
    """One sentence about the machine and the software, for the top of the report."""
    m = result.get("machine", {})
    fs = m.get("fsync_ms", {})
    probe = fs.get("data_dir") or fs.get("results_dir") or {}
    if probe.get("append_fsync"):
        app, pre = probe["append_fsync"], probe.get("prealloc_fdatasync") or {}
        fsync = (f"{probe.get('bytes', '?')} B synced write on {probe.get('filesystem', '?')}: "
                 f"append+fsync p50 {fmt(app.get('p50'))} ms / p99 {fmt(app.get('p99'))} ms, "
                 f"preallocated overwrite+fdatasync p50 {fmt(pre.get('p50'))} ms / "
                 f"p99 {fmt(pre.get('p99'))} ms")
    else:
        fsync = "fsync not measured"
    parts = [
        f"{m.get('cores', '?')} cores ({m.get('cpu_model') or 'unknown CPU'})",
        fsync,
        f"Python {m.get('python', '?')}, grpcio {m.get('grpcio', '?')}, "
        f"protobuf {m.get('protobuf', '?')}",
        f"etcd {m['etcd']}" if m.get("etcd") else "etcd not run",
        f"kvstore {m.get('kvstore_git') or '?'}",
    ]
    start, end = m.get("loadavg_at_start"), m.get("loadavg_at_end")
    if start:
        parts.append(f"load average {start[0]:.2f} at start"
                     + (f", {end[0]:.2f} at end" if end else ""))
    return "; ".join(parts) + "."


def render_markdown(result: dict[str, Any], verdicts: list[dict[str, Any]] | None = None) -> str:
    """The whole report: machine, side-by-side table, target verdicts, load detail."""
    verdicts = evaluate_targets(result) if verdicts is None else verdicts
    cfg = result["config"]
    out = [f"## kvstore vs etcd vs floor ({result.get('mode', '?')} run, "
           f"{result.get('started_at', '?')})", "",
           f"Command: `{result.get('command', '?')}`", "", f"Machine: {machine_line(result)}", "",
           "Sequential figures: one blocking client, one operation at a time. Ratios are "
           "kvstore/reference: below 1 is better for latency (ms) and CPU per operation, "
           "above 1 for ops/s. Servers' CPU per operation: the servers' CPU cores over the "
           "measured window × 1000 / ops/s.", ""]
    if len(table_columns(result)[0]) > 3:
        out += ["`-etcdapi` / `-aetcd`: the same running cluster measured again through the "
                "etcd API with the aetcd client (sequential latency and puts under load).", ""]
    out += _main_table(result)
    failed = {n: t["error"] for n, t in result.get("targets", {}).items() if "error" in t}
    for name, error in failed.items():
        out += ["", f"**{name} failed**: {error}"]
    out += ["", "### Targets", ""] + _targets_table(verdicts)
    load = _load_table(result)
    if load:
        out += ["", f"### Under load (closed loop, up to {cfg['processes']} client processes, "
                f"{cfg['duration']:g} s measured after {cfg['warmup']:g} s warm-up; "
                "CPU in cores over the window)", ""] + load
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- validation

LATENCY_KEYS = ("n", "p50", "p90", "p99", "p99.9", "max")
THROUGHPUT_KEYS = ("op", "in_flight", "processes", "ops", "errors", "window_s", "ops_per_s",
                   "latency_ms", "client_cpu_cores", "server_cpu_cores", "other_cpu_cores")
# Keys added by a schema version (older results are still rendered without them).
THROUGHPUT_KEYS_SINCE = {3: ("server_cpu_ms_per_op",)}


def validate_result(result: dict[str, Any]) -> list[str]:
    """Problems with a result document's shape (empty when fine).

    Why: results are compared across commits and machines, and `python -m bench.report`
    re-renders old files; a file of another shape should be rejected with a reason, not
    rendered as a table of dashes.
    """
    problems: list[str] = []
    for key in ("schema", "mode", "command", "started_at", "config", "machine", "targets"):
        if key not in result:
            problems.append(f"missing top-level {key!r}")
    if problems:
        return problems
    if not str(result["schema"]).startswith("kvstore-bench/"):
        problems.append(f"unknown schema {result['schema']!r}")
    version = _schema_version(result["schema"])
    load_keys = THROUGHPUT_KEYS + tuple(k for since, keys in THROUGHPUT_KEYS_SINCE.items()
                                        if version >= since for k in keys)
    for key in ("nodes", "value_size", "value_sizes", "levels", "read_levels", "processes",
                "duration", "warmup"):
        if key not in result["config"]:
            problems.append(f"config lacks {key!r}")
    for key in ("cores", "python", "grpcio", "fsync_ms"):
        if key not in result["machine"]:
            problems.append(f"machine lacks {key!r}")
    for name, t in result["targets"].items():
        if "error" in t:
            continue
        for key in ("kind", "nodes", "leader", "endpoints"):
            if key not in t:
                problems.append(f"{name} lacks {key!r}")
        sections = [(f"{name}.latency.{op}", e) for op, e in t.get("latency", {}).items()]
        sections += [(f"{name}.value_sizes.{s}", e) for s, e in t.get("value_sizes", {}).items()]
        for where, entry in sections:
            problems += [f"{where} lacks {k!r}" for k in (*LATENCY_KEYS, "cdf_ms")
                         if k not in entry]
        for op, entries in t.get("throughput", {}).items():
            for e in entries:
                where = f"{name}.throughput.{op}[{e.get('in_flight', '?')}]"
                problems += [f"{where} lacks {k!r}" for k in load_keys if k not in e]
                problems += [f"{where}.latency_ms lacks {k!r}" for k in LATENCY_KEYS
                             if k not in e.get("latency_ms", {})]
    return problems


def _schema_version(schema: Any) -> int:
    try:
        return int(str(schema).rsplit("/", 1)[1])
    except (IndexError, ValueError):
        return 0


# --------------------------------------------------------------------------- plots


def write_plots(result: dict[str, Any], directory: Path) -> list[Path]:
    """latency-cdf.png, throughput.png and value-sizes.png, each only if the run measured
    what it shows; raises ImportError without matplotlib (the caller says how to install it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = {n: t for n, t in result.get("targets", {}).items() if "error" not in t}
    written: list[Path] = []
    directory.mkdir(parents=True, exist_ok=True)
    for name, draw in (("latency-cdf.png", _plot_cdf), ("throughput.png", _plot_throughput),
                       ("value-sizes.png", _plot_sizes)):
        fig = draw(plt, targets)
        if fig is not None:
            fig.tight_layout()
            fig.savefig(directory / name, dpi=110)
            plt.close(fig)
            written.append(directory / name)
    return written


def _plot_cdf(plt: Any, targets: dict[str, Any]) -> Any:
    ops = [("put", "sequential put"), ("linearizable_get", "linearizable get"),
           ("stale_get", "stale get")]
    if not any(t.get("latency", {}).get(op) for t in targets.values() for op, _ in ops):
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    for ax, (op, title) in zip(axes, ops, strict=True):
        for name, t in targets.items():
            points = t.get("latency", {}).get(op, {}).get("cdf_ms")
            if points:
                ax.plot([p[1] for p in points], [p[0] for p in points], label=name)
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis)
        ax.set_title(f"{title}: latency CDF")
        ax.set_xlabel("latency (ms, log scale)")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    axes[0].set_ylabel("percentile")
    return fig


def _plot_throughput(plt: Any, targets: dict[str, Any]) -> Any:
    series = {n: t["throughput"]["put"] for n, t in targets.items()
              if t.get("throughput", {}).get("put")}
    if not series:
        return None
    fig, (ax_ops, ax_lat) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, entries in series.items():
        levels = [e["in_flight"] for e in entries]
        ax_ops.plot(levels, [e["ops_per_s"] for e in entries], marker="o", label=name)
        ax_lat.plot(levels, [e["latency_ms"]["p99"] for e in entries], marker="o", label=name)
    levels = sorted({e["in_flight"] for entries in series.values() for e in entries})
    ax_lat.set_yscale("log")
    _plain_log_ticks(ax_lat.yaxis)
    for ax, ylabel in ((ax_ops, "puts/s"), (ax_lat, "put p99 latency (ms, log scale)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(level) for level in levels])
        ax.minorticks_off()
        ax.set_xlabel("writes in flight")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    ax_ops.set_title("put throughput vs concurrency")
    ax_lat.set_title("put tail latency under load")
    return fig


def _plot_sizes(plt: Any, targets: dict[str, Any]) -> Any:
    series = {n: t["value_sizes"] for n, t in targets.items() if t.get("value_sizes")}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    for name, sizes in series.items():
        xs = sorted(sizes, key=int)
        line = ax.plot([int(x) for x in xs], [sizes[x]["p50"] for x in xs], marker="o",
                       label=f"{name} p50")[0]
        ax.plot([int(x) for x in xs], [sizes[x]["p99"] for x in xs], marker="x",
                linestyle="--", color=line.get_color(), label=f"{name} p99")
    sizes = sorted({int(x) for v in series.values() for x in v})
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [_bytes(x) for x in sizes])
    ax.set_yscale("log")
    _plain_log_ticks(ax.yaxis)
    ax.set_xlabel("value size")
    ax.set_ylabel("sequential put latency (ms)")
    ax.set_title("put latency vs value size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    return fig


def _plain_log_ticks(axis: Any) -> None:
    """Label a log axis 0.5, 1, 2, 5, 10 rather than 5×10⁻¹: easier to read off."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


PLOT_HINT = ("plots skipped: matplotlib is not installed (pip install -e '.[bench]'); "
             "redo them later with: python -m bench.report RESULT.json")


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.report",
                                 description="Re-render table and plots of a saved result.")
    ap.add_argument("result", type=Path, help="results.json written by python -m bench")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args()
    result = json.loads(args.result.read_text())
    problems = validate_result(result)
    if problems:
        sys.exit(f"{args.result}: not a bench result: {'; '.join(problems[:5])}")
    text = render_markdown(result)
    (args.result.parent / "table.md").write_text(text)
    sys.stdout.write(text)
    if not args.no_plots:
        try:
            for path in write_plots(result, args.result.parent):
                print(f"plot: {path}")
        except ImportError:
            print(PLOT_HINT, file=sys.stderr)


if __name__ == "__main__":
    main()
