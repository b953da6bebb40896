"""`kvstore alarm ...`: list and disarm cluster alarms (as `etcdctl alarm list|disarm`).

While an alarm is raised the cluster refuses puts and compare-and-swaps: NOSPACE once a
member's database passed `--quota-backend-bytes`, CORRUPT once members' state hashes
differ. Alarms are cleared only by an operator, after fixing the cause, because clearing
one whose cause remains just lets it be raised again (NOSPACE) or hides lost data (CORRUPT).
"""

from __future__ import annotations

import json

import click

from kvstore.cli.app import client_options, main, resolve_target


@main.group()
def alarm() -> None:
    """List or disarm cluster alarms (NOSPACE, CORRUPT)."""


def _print_alarms(alarms: list[tuple[str, str]], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"alarms": [{"type": t, "member": m} for t, m in alarms]}))
    elif not alarms:
        click.echo("no alarms")
    else:
        for alarm_type, member in alarms:
            click.echo(f"{alarm_type} {member}")


@alarm.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@client_options
def list_alarms(as_json: bool, endpoints: str | None, directory: str, timeout: float,
                **tls: str | None) -> None:
    """Print the raised alarms, one `TYPE MEMBER` line each (or "no alarms")."""
    with resolve_target(endpoints, directory, **tls).client(timeout) as client:
        alarms = client.alarms()
    _print_alarms(alarms, as_json)


@alarm.command("disarm")
@click.option("--type", "alarm_type", default="", metavar="TYPE",
              type=click.Choice(["", "NOSPACE", "CORRUPT"], case_sensitive=False),
              help="Only this alarm type (NOSPACE or CORRUPT) [default: every type].")
@click.option("--member", default="", metavar="NODE",
              help="Only alarms raised for this node id [default: every member].")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@client_options
def disarm(alarm_type: str, member: str, as_json: bool, endpoints: str | None,
           directory: str, timeout: float, **tls: str | None) -> None:
    """Clear alarms through the log, then print those left (or "no alarms").

    Free space (delete keys) before disarming NOSPACE, and rebuild the named member
    (`kvstore cluster resync NODE`) before disarming CORRUPT: a cause still there raises
    the alarm again.
    """
    with resolve_target(endpoints, directory, **tls).client(timeout) as client:
        alarms = client.disarm(alarm_type.upper(), member)
    _print_alarms(alarms, as_json)
