"""The `kvstore` group, its error policy, and the options the commands share.

Error policy: every failure prints ONE line on stderr ("kvstore: ...") and exits
non-zero; never a traceback (set KVSTORE_DEBUG=1 to get one, which node processes
started by `cluster up` do, so their logs keep the details of a crash).
Exit codes: 0 ok, 1 failure (including "key not found"), 2 bad usage, 130 interrupted.

Where a command finds its cluster: endpoints from --endpoints, else $KVSTORE_ENDPOINTS,
else DIR/cluster.json; TLS from --cacert/--cert/--key (etcdctl's names), else
$KVSTORE_CACERT/$KVSTORE_CERT/$KVSTORE_KEY, else, when the endpoints came from
cluster.json, the client certificate it records (a `cluster up --tls` cluster).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import click

from kvstore import __version__
from kvstore.client import (
    DEFAULT_TIMEOUT,
    CorruptCluster,
    KVClient,
    KVError,
    NoSpace,
    TLSConfig,
    TLSConfigError,
    parse_endpoints,
)
from kvstore.client.tls import CACERT_ENV, CERT_ENV, KEY_ENV
from kvstore.cluster.layout import LayoutError
from kvstore.cluster.manager import DEFAULT_DIR, ClusterError, cluster_file, load_state

ENDPOINTS_ENV = "KVSTORE_ENDPOINTS"
DEBUG_ENV = "KVSTORE_DEBUG"

F = TypeVar("F", bound=Callable[..., Any])


# --------------------------------------------------------------------------- error handling


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "unknown error"


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"kvstore: {_one_line(message)}", err=True)
    sys.exit(code)


def _kv_error_text(error: KVError) -> str:
    # An alarm refusal is an operator's problem, not a transient one: say what to do.
    if isinstance(error, NoSpace):
        text = ("database space exceeded (NOSPACE alarm raised; free space, then "
                f"kvstore alarm disarm): {error}")
    elif isinstance(error, CorruptCluster):
        text = ("corrupt cluster (CORRUPT alarm raised; rebuild the member named by "
                f"kvstore alarm list with kvstore cluster resync, then kvstore alarm disarm): "
                f"{error}")
    else:
        text = str(error)
    if error.maybe_applied:
        text += " (the write may or may not have been applied)"
    return text


class _Main(click.Group):
    """A click group whose entry point turns every failure into one stderr line."""

    def main(self, *args: Any, **kwargs: Any) -> NoReturn:  # type: ignore[override]
        kwargs["standalone_mode"] = False
        kwargs.setdefault("prog_name", "kvstore")
        try:
            rv = super().main(*args, **kwargs)
        except SystemExit:
            raise
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else "")
            sys.exit(0)
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            fail(exc.format_message() + hint, 2)
        except click.ClickException as exc:
            fail(exc.format_message(), exc.exit_code)
        except (click.Abort, KeyboardInterrupt):
            fail("interrupted", 130)
        except KVError as exc:
            self._debug()
            fail(_kv_error_text(exc))
        except (ClusterError, LayoutError, TLSConfigError) as exc:
            self._debug()
            fail(str(exc))
        except BrokenPipeError:
            # Output piped into e.g. `head`: not worth an error line.
            with open(os.devnull, "w") as devnull:
                os.dup2(devnull.fileno(), sys.stdout.fileno())
            sys.exit(1)
        except Exception as exc:  # the last line of defence: never a traceback
            self._debug()
            fail(f"{type(exc).__name__}: {exc}")
        sys.exit(rv if isinstance(rv, int) else 0)

    @staticmethod
    def _debug() -> None:
        if os.environ.get(DEBUG_ENV):
            traceback.print_exc()


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kvstore")
def main() -> None:
    """kvstore: a Raft-replicated key-value store."""


# --------------------------------------------------------------------------- shared options


def dir_option(f: F) -> F:
    return click.option(
        "--dir",
        "directory",
        default=DEFAULT_DIR,
        show_default=True,
        type=click.Path(file_okay=False),
        help="Local cluster directory (holds cluster.json).",
    )(f)


def timeout_option(default: float = DEFAULT_TIMEOUT) -> Callable[[F], F]:
    def wrap(f: F) -> F:
        return click.option(
            "--timeout",
            default=default,
            show_default=True,
            type=click.FloatRange(min=0, min_open=True),
            help="Overall deadline of the command in seconds.",
        )(f)

    return wrap


def client_options(f: F) -> F:
    """--endpoints, the TLS options, --dir and --timeout: every command that talks to nodes."""
    f = timeout_option()(f)
    f = dir_option(f)
    # Passed on as tls_cacert/tls_cert/tls_key: `get KEY` already has a parameter "key".
    for name, env, what in (
        ("--key", KEY_ENV, "Private key of --cert."),
        ("--cert", CERT_ENV, "Client certificate (for nodes with --client-cert-auth)."),
        ("--cacert", CACERT_ENV, "CA certificate that signed the nodes' certificates: use TLS."),
    ):
        f = click.option(name, f"tls_{name[2:]}", default=None, metavar="FILE",
                         help=f"{what} [default: ${env}, else cluster.json's]")(f)
    return click.option(
        "--endpoints",
        default=None,
        metavar="H:P,...",
        help=f"Node addresses (default: ${ENDPOINTS_ENV}, else DIR/cluster.json).",
    )(f)


@dataclass
class Target:
    """Where a command's requests go: endpoints, how to connect, and (when they came from
    cluster.json) address -> node id, so that an unreachable node can still be named."""

    endpoints: list[str]
    tls: TLSConfig | None = None
    names: dict[str, str] = field(default_factory=dict)

    def client(self, timeout: float) -> KVClient:
        return KVClient(self.endpoints, timeout=timeout, tls=self.tls)


def resolve_target(
    endpoints: str | None, directory: str, tls_cacert: str | None = None,
    tls_cert: str | None = None, tls_key: str | None = None,
) -> Target:
    """Endpoints from --endpoints, else $KVSTORE_ENDPOINTS, else DIR/cluster.json; TLS from
    the flags, else the environment, else cluster.json (only with its endpoints)."""
    tls = _explicit_tls(tls_cacert, tls_cert, tls_key)
    for source, text in (("--endpoints", endpoints),
                         (ENDPOINTS_ENV, os.environ.get(ENDPOINTS_ENV))):
        if text is None or (source == ENDPOINTS_ENV and not text.strip()):
            continue
        try:
            return Target(parse_endpoints(text), tls)
        except ValueError as exc:
            raise click.UsageError(f"{source}: {exc}") from None
    if not cluster_file(directory).exists():
        raise click.ClickException(
            f"no endpoints: pass --endpoints H:P,..., set {ENDPOINTS_ENV}, "
            f"or start a local cluster ({cluster_file(directory)} not found)"
        )
    state = load_state(directory)
    if not state.nodes:
        raise ClusterError(f"{state.path} lists no nodes")
    return Target([r.address for r in state.nodes], tls or state.client_tls(),
                  {r.address: r.id for r in state.nodes})


def _explicit_tls(cacert: str | None, cert: str | None, key: str | None) -> TLSConfig | None:
    """TLS from the flags, each falling back to its environment variable; None if neither
    names any file."""
    values = [flag or os.environ.get(env) or None
              for flag, env in ((cacert, CACERT_ENV), (cert, CERT_ENV), (key, KEY_ENV))]
    if not any(values):
        return None
    ca, cert_file, key_file = values
    if (cert_file is None) != (key_file is None):
        raise click.UsageError("--cert and --key go together (a certificate and its key)")
    return TLSConfig(ca=ca, cert=cert_file, key=key_file)


def arg_bytes(text: str) -> bytes:
    # surrogateescape round-trips arguments that were not valid UTF-8 on the command line.
    return text.encode("utf-8", "surrogateescape")
