"""Coordination commands: `watch`, `lease ...`, `lock`, `elect`.

Output follows etcdctl where etcdctl has a form an operator knows (lease ids in 16-digit
hex, "lease ... granted with TTL(10s)", the lock key, the leader's key and value), except
`watch`, which prints ONE line per event (the contract; etcdctl prints three), or with
--json one JSON object per line. Long-running commands (watch, keep-alive, lock without a
command, elect) run until interrupted; Ctrl-C ends them quietly with exit 0, after
cleaning up (a lock or campaign key is deleted, a watch closed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import click

from kvstore.cli.app import arg_bytes, client_options, fail, main, resolve_target
from kvstore.cli.mvcc import text_fields, write_lines
from kvstore.client import Election, KVClient, WatchEvent
from kvstore.client.locks import DEFAULT_LOCK_TTL

LOCK_KEY_ENV = "KVSTORE_LOCK_KEY"
LOCK_TOKEN_ENV = "KVSTORE_LOCK_TOKEN"


def lease_id(text: str) -> int:
    """A lease id as etcdctl takes it: hexadecimal (an optional 0x allowed)."""
    try:
        value = int(text.removeprefix("0x"), 16)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a hexadecimal lease id") from None
    if not 0 < value < 1 << 63:
        raise click.BadParameter(f"{text!r} is not a lease id (1..7fffffffffffffff)")
    return value


class LeaseId(click.ParamType):
    name = "ID"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        return value if isinstance(value, int) else lease_id(str(value))


LEASE_ID = LeaseId()


def _client(endpoints: str | None, directory: str, timeout: float,
            tls: dict[str, str | None]) -> KVClient:
    return resolve_target(endpoints, directory, **tls).client(timeout)


# --------------------------------------------------------------------------- watch


def event_line(event: WatchEvent, prev_kv: bool) -> bytes:
    line = f"{event.type} ".encode() + event.key
    if event.type == "PUT":
        line += b" " + event.value
    if prev_kv and event.prev_kv is not None:
        line += b" (prev " + event.prev_kv.value + b")"
    return line


def event_json(event: WatchEvent, prev_kv: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": event.type, **text_fields("key", event.key)}
    if event.type == "PUT":
        doc.update(text_fields("value", event.value))
    else:
        doc["value"] = None
    doc.update(mod_revision=event.mod_revision, create_revision=event.create_revision,
               version=event.version, lease=event.lease)
    if prev_kv:
        if event.prev_kv is None:
            doc["prev_value"] = None
        else:
            doc.update(text_fields("prev_value", event.prev_kv.value))
    return doc


@main.command()
@click.argument("key")
@click.argument("range_end", required=False)
@click.option("--prefix", is_flag=True, help="Every key starting with KEY.")
@click.option("--rev", type=click.IntRange(min=0), default=0,
              help="Start at this revision (replays history from it; 0: from now).")
@click.option("--prev-kv", is_flag=True, help="Show each key's previous value too.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event.")
@client_options
def watch(key: str, range_end: str | None, prefix: bool, rev: int, prev_kv: bool,
          as_json: bool, endpoints: str | None, directory: str, timeout: float,
          **tls: str | None) -> None:
    """Print every change to KEY (or [KEY, RANGE_END), or --prefix), one line per event
    ("PUT key value", "DELETE key"), until interrupted. Reconnects to another node if
    one fails, without losing or repeating events."""
    try:
        with _client(endpoints, directory, timeout, tls) as client, client.watch(
                arg_bytes(key), prefix=prefix, start_revision=rev, prev_kv=prev_kv,
                range_end=None if range_end is None else arg_bytes(range_end)) as events:
            for event in events:
                if as_json:
                    click.echo(json.dumps(event_json(event, prev_kv)))
                    sys.stdout.flush()
                else:
                    write_lines([event_line(event, prev_kv)])
    except KeyboardInterrupt:
        sys.exit(0)


# --------------------------------------------------------------------------- lease


@main.group()
def lease() -> None:
    """Leases: grant, revoke, keep-alive, timetolive, list (ids in hex, as etcdctl)."""


@lease.command("grant")
@click.argument("ttl", type=click.IntRange(min=1))
@client_options
def lease_grant(ttl: int, endpoints: str | None, directory: str, timeout: float,
                **tls: str | None) -> None:
    """Grant a lease of TTL seconds (not kept alive: see keep-alive)."""
    with _client(endpoints, directory, timeout, tls) as client:
        grant = client.lease_grant(ttl)
    click.echo(f"lease {grant.id:016x} granted with TTL({grant.ttl}s)")


@lease.command("revoke")
@click.argument("lease_id", metavar="ID", type=LEASE_ID)
@client_options
def lease_revoke(lease_id: int, endpoints: str | None, directory: str, timeout: float,
                 **tls: str | None) -> None:
    """Revoke lease ID: its keys are deleted now."""
    with _client(endpoints, directory, timeout, tls) as client:
        client.lease_revoke(lease_id)
    click.echo(f"lease {lease_id:016x} revoked")


@lease.command("keep-alive")
@click.argument("lease_id", metavar="ID", type=LEASE_ID)
@click.option("--once", is_flag=True, help="Renew once and exit.")
@client_options
def lease_keep_alive(lease_id: int, once: bool, endpoints: str | None, directory: str,
                     timeout: float, **tls: str | None) -> None:
    """Keep lease ID alive (renewing every TTL/3) until interrupted or it expires."""
    try:
        with _client(endpoints, directory, timeout, tls) as client:
            while True:
                ttl = client.lease_keepalive_once(lease_id)
                if ttl <= 0:
                    fail(f"lease {lease_id:016x} expired or revoked")
                click.echo(f"lease {lease_id:016x} keepalived with TTL({ttl})")
                sys.stdout.flush()
                if once:
                    return
                time.sleep(max(ttl / 3, 0.5))
    except KeyboardInterrupt:
        sys.exit(0)


@lease.command("timetolive")
@click.argument("lease_id", metavar="ID", type=LEASE_ID)
@click.option("--keys", is_flag=True, help="List the keys attached to the lease.")
@client_options
def lease_timetolive(lease_id: int, keys: bool, endpoints: str | None, directory: str,
                     timeout: float, **tls: str | None) -> None:
    """Print the time left of lease ID (and its keys)."""
    with _client(endpoints, directory, timeout, tls) as client:
        info = client.lease_time_to_live(lease_id, keys=keys)
    if not info.exists:
        click.echo(f"lease {lease_id:016x} already expired")
        return
    line = f"lease {lease_id:016x} granted with TTL({info.granted_ttl}s), remaining({info.ttl}s)"
    if keys:
        quoted = " ".join(json.dumps(k.decode("utf-8", "replace")) for k in info.keys)
        line += f", attached keys([{quoted}])"
    click.echo(line)


@lease.command("list")
@client_options
def lease_list(endpoints: str | None, directory: str, timeout: float,
               **tls: str | None) -> None:
    """List the live leases."""
    with _client(endpoints, directory, timeout, tls) as client:
        ids = client.leases()
    click.echo(f"found {len(ids)} leases")
    for i in ids:
        click.echo(f"{i:016x}")


# --------------------------------------------------------------------------- lock, elect


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--ttl", type=click.IntRange(min=1), default=DEFAULT_LOCK_TTL, show_default=True,
              help="Seconds the lock outlives this process if it dies.")
@client_options
def lock(name: str, command: Sequence[str], ttl: int, endpoints: str | None, directory: str,
         timeout: float, **tls: str | None) -> None:
    """Acquire lock NAME (etcd's mutex, interoperable with `etcdctl lock`), then run
    `-- COMMAND ...` and exit with its code; COMMAND gets $KVSTORE_LOCK_KEY and the fencing
    token $KVSTORE_LOCK_TOKEN. Without a command: print the key and hold the lock until
    interrupted. If the lock's lease is lost, COMMAND is terminated and this exits 1."""
    with _client(endpoints, directory, timeout, tls) as client:
        held = client.lock(arg_bytes(name), ttl=ttl)
        try:
            held.acquire()
        except KeyboardInterrupt:
            fail("interrupted while waiting for the lock", 130)
        try:
            code = _hold(held, list(command))
        finally:
            held.release()
    sys.exit(code)


def _hold(held: Any, command: list[str]) -> int:
    """Run ``command`` (or wait for Ctrl-C) while holding ``held``; the exit code."""
    key = held.key.decode("utf-8", "surrogateescape")
    lease = held.lease
    if not command:
        click.echo(key)
        sys.stdout.flush()
        try:
            while not lease.wait_lost(1.0):
                pass
        except KeyboardInterrupt:
            return 0
        fail(f"lock lost: {lease.lost_reason}")
    env = {**os.environ, LOCK_KEY_ENV: key, LOCK_TOKEN_ENV: str(held.token)}
    try:
        proc = subprocess.Popen(command, env=env)
    except OSError as exc:
        fail(f"cannot run {command[0]}: {exc.strerror or exc}", 127)
    try:
        while proc.poll() is None:
            if lease.wait_lost(0.1):
                proc.terminate()
                proc.wait()
                fail(f"lock lost while {command[0]} ran (terminated): {lease.lost_reason}")
    except KeyboardInterrupt:
        proc.wait()  # it got the same SIGINT from the terminal
    code = proc.returncode
    return 128 - code if code < 0 else code


@main.command()
@click.argument("name")
@click.argument("proposal", required=False)
@click.option("-l", "--listen", is_flag=True, help="Observe the leader instead of campaigning.")
@click.option("--ttl", type=click.IntRange(min=1), default=DEFAULT_LOCK_TTL, show_default=True,
              help="Seconds the leadership outlives this process if it dies.")
@client_options
def elect(name: str, proposal: str | None, listen: bool, ttl: int, endpoints: str | None,
          directory: str, timeout: float, **tls: str | None) -> None:
    """Campaign in election NAME with PROPOSAL, print the leader key and value once
    elected, and lead until interrupted (then resign); with --listen print the leader's key
    and value on each change. Interoperable with `etcdctl elect`."""
    if listen == (proposal is not None):
        raise click.UsageError("give a PROPOSAL to campaign, or --listen to observe")
    with _client(endpoints, directory, timeout, tls) as client:
        election = Election(client, arg_bytes(name), ttl=ttl)
        try:
            if listen:
                for kv in election.observe():
                    write_lines([kv.key, kv.value])
                return
            election.campaign(arg_bytes(proposal or ""))
            assert election.lease is not None
            write_lines([election.key, arg_bytes(proposal or "")])
            while not election.lease.wait_lost(1.0):
                pass
            fail(f"leadership lost: {election.lease.lost_reason}")
        except KeyboardInterrupt:
            pass
        finally:
            _quietly(election.close)
    sys.exit(0)


def _quietly(fn: Any) -> None:
    """Cleanup on the way out of an interrupted command; a failure here must not replace
    the command's own outcome (the lease ends the key within its TTL anyway)."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        fn()
    except Exception:  # noqa: BLE001 - best effort
        pass
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


__all__ = ["LEASE_ID", "event_json", "event_line", "lease_id"]
