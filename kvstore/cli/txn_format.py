"""etcdctl's transaction text: parsing what `kvstore txn` reads on stdin, printing its answer.

The input is what `etcdctl txn` reads, so scripts written for etcd work unchanged::

    mod("config") = "7"          <- compares, one per line, until a blank line
    value("lock") != "held"

    put config "v2"              <- success requests (put, get, del), until a blank line
    get config/ --prefix

    get config                   <- failure requests, until a blank line or the end

A compare is ``TARGET("KEY") OP "VALUE"``: TARGET one of ver/version, c/create, m/mod,
val/value, lease (hex, as etcdctl); OP one of ``=``, ``!=``, ``<``, ``>``; KEY and VALUE are
Go-quoted strings (``"..."`` with Go's escapes, or a raw `` `...` ``). A request line is
split as etcdctl splits it (double quotes with Go escapes, single quotes literal) and takes
the options of the matching etcdctl command.

The output is etcdctl's simple format: ``SUCCESS`` or ``FAILURE``, then for each response a
blank line and the response as the command alone would print it (put: ``OK``; del: the
number deleted, then the deleted keys with --prev-kv; get: key and value lines).

No click and no I/O here: :func:`parse_txn` takes the text, :func:`txn_lines` returns
bytes lines, so both are unit-tested directly. Errors are :class:`TxnSyntaxError` with a
message naming the line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kvstore.client.ranges import KeyValue, RangeResult, sort_order_of, sort_target_of
from kvstore.client.txn import Compare, DeleteResult, Op, PutResult, TxnResult

_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92,
            '"': 34, "'": 39}
_TARGETS: dict[str, Callable[[bytes], Any]] = {
    "ver": Compare.version, "version": Compare.version,
    "c": Compare.create_revision, "create": Compare.create_revision,
    "m": Compare.mod_revision, "mod": Compare.mod_revision,
    "val": Compare.value, "value": Compare.value,
    "lease": Compare.lease,
}


class TxnSyntaxError(ValueError):
    """The transaction text is malformed; the message names the offending line."""


@dataclass(frozen=True)
class ParsedTxn:
    compare: tuple[Compare, ...]
    success: tuple[Op, ...]
    failure: tuple[Op, ...]


# --------------------------------------------------------------------------- Go strings


def go_unquote(text: str, pos: int = 0) -> tuple[bytes, int]:
    """Read one Go string literal starting at ``text[pos]``: ``"..."`` with Go's escapes
    (\\n, \\xHH, \\ooo, \\uXXXX, ...) or a raw `` `...` ``. Returns (bytes, position after
    the closing quote); raises ValueError. Bytes, because Go strings are bytes: ``"\\xff"``
    is one byte 0xff, not a code point."""
    if pos >= len(text) or text[pos] not in "\"`":
        raise ValueError("expected a quoted string")
    if text[pos] == "`":
        end = text.find("`", pos + 1)
        if end < 0:
            raise ValueError("unterminated raw string")
        return text[pos + 1:end].encode(), end + 1
    out = bytearray()
    i = pos + 1
    while i < len(text):
        ch = text[i]
        if ch == '"':
            return bytes(out), i + 1
        if ch != "\\":
            out += ch.encode()
            i += 1
            continue
        i += 1
        if i >= len(text):
            break
        esc = text[i]
        if esc in _ESCAPES:
            out.append(_ESCAPES[esc])
            i += 1
        elif esc == "x":
            out.append(int(_hex(text, i + 1, 2), 16))
            i += 3
        elif esc in "uU":
            width = 4 if esc == "u" else 8
            out += chr(int(_hex(text, i + 1, width), 16)).encode()
            i += 1 + width
        elif esc in "01234567":
            digits = text[i:i + 3]
            if len(digits) != 3 or any(d not in "01234567" for d in digits):
                raise ValueError(f"bad octal escape \\{digits}")
            out.append(int(digits, 8) & 0xFF)
            i += 3
        else:
            raise ValueError(f"unknown escape \\{esc}")
    raise ValueError("unterminated string")


def _hex(text: str, start: int, width: int) -> str:
    digits = text[start:start + width]
    if len(digits) != width or any(d not in "0123456789abcdefABCDEF" for d in digits):
        raise ValueError(f"bad escape: expected {width} hex digits")
    return digits


def split_args(line: str) -> list[bytes]:
    """Split a request line as etcdctl does: whitespace-separated words; a word in double
    quotes takes Go's escapes, one in single quotes is taken literally."""
    words: list[bytes] = []
    i = 0
    while i < len(line):
        if line[i].isspace():
            i += 1
        elif line[i] == '"':
            word, i = go_unquote(line, i)
            words.append(word)
        elif line[i] == "'":
            end = line.find("'", i + 1)
            if end < 0:
                raise ValueError("unterminated single quote")
            words.append(line[i + 1:end].encode())
            i = end + 1
        else:
            start = i
            while i < len(line) and not line[i].isspace():
                i += 1
            words.append(line[start:i].encode())
    return words


# --------------------------------------------------------------------------- compares


def parse_compare(line: str) -> Compare:
    """One compare line, e.g. ``mod("k") > "5"`` or ``value("k") = "v"``."""
    target, paren, rest = line.partition("(")
    if not paren:
        raise TxnSyntaxError(f"malformed comparison: {line}")
    make = _TARGETS.get(target)
    if make is None:
        raise TxnSyntaxError(f"malformed comparison: {line} (unknown target {target})")
    try:
        key, i = go_unquote(rest)
        if rest[i:i + 1] != ")":
            raise ValueError("expected ) after the key")
        op, _, tail = rest[i + 1:].strip().partition(" ")
        tail = tail.strip()
        value, end = go_unquote(tail)
        if tail[end:].strip():
            raise ValueError(f"unexpected text after the value: {tail[end:].strip()}")
    except ValueError as exc:
        raise TxnSyntaxError(f"malformed comparison: {line} ({exc})") from None
    operand: bytes | int = value
    if target not in ("val", "value"):
        try:
            operand = int(value.decode(), 16 if target == "lease" else 10)
        except ValueError:
            raise TxnSyntaxError(f"invalid txn compare request: {line} "
                                 f"({value.decode(errors='replace')!r} is not a number)") from None
    side = make(key)
    if op == "=":
        return side == operand
    if op == "!=":
        return side != operand
    if op == "<":
        return side < operand
    if op == ">":
        return side > operand
    raise TxnSyntaxError(f"malformed comparison: {line} (unknown operator {op!r}; "
                         "expected =, !=, < or >)")


# --------------------------------------------------------------------------- requests

# Each command's flags: name -> whether it takes a value.
_FLAGS = {
    "put": {"prev-kv": False},
    "get": {"prefix": False, "from-key": False, "limit": True, "rev": True, "sort-by": True,
            "order": True, "keys-only": False, "count-only": False},
    "del": {"prefix": False, "from-key": False, "prev-kv": False},
}


def _options(cmd: str, words: list[bytes], line: str) -> tuple[list[bytes], dict[str, Any]]:
    """Split a request's words into positional arguments and its --flags."""
    args: list[bytes] = []
    flags: dict[str, Any] = {}
    known = _FLAGS[cmd]
    it = iter(words)
    for word in it:
        if not word.startswith(b"--") or word == b"--":
            args.append(word)
            continue
        name, eq, value = word[2:].decode(errors="replace").partition("=")
        if name not in known:
            raise TxnSyntaxError(f"invalid txn request: {line} (unknown flag --{name} "
                                 f"for {cmd})")
        if known[name] and not eq:
            nxt = next(it, None)
            if nxt is None:
                raise TxnSyntaxError(f"invalid txn request: {line} (--{name} needs a value)")
            value = nxt.decode(errors="replace")
        flags[name] = value if known[name] else True
    return args, flags


def _int_flag(flags: dict[str, Any], name: str, line: str) -> int:
    try:
        return int(flags.get(name, 0))
    except ValueError:
        raise TxnSyntaxError(f"invalid txn request: {line} (--{name} takes a number)") from None


def parse_request(line: str) -> Op:
    """One request line: ``put KEY VALUE [--prev-kv]``, ``get KEY [RANGE_END] [--prefix]
    [--from-key] [--limit N] [--rev R] [--sort-by T] [--order O] [--keys-only]
    [--count-only]``, ``del KEY [RANGE_END] [--prefix] [--from-key] [--prev-kv]``."""
    try:
        words = split_args(line)
    except ValueError as exc:
        raise TxnSyntaxError(f"invalid txn request: {line} ({exc})") from None
    if len(words) < 2:
        raise TxnSyntaxError(f"invalid txn request: {line}")
    cmd = words[0].decode(errors="replace")
    cmd = "del" if cmd == "delete" else cmd
    if cmd not in _FLAGS:
        raise TxnSyntaxError(f"invalid txn request: {line} (unknown command {cmd}; "
                             "expected put, get or del)")
    args, flags = _options(cmd, words[1:], line)
    if cmd == "put":
        if len(args) != 2:
            raise TxnSyntaxError(f"invalid txn request: {line} (put takes KEY VALUE)")
        return Op.put(args[0], args[1], prev_kv=flags.get("prev-kv", False))
    if not 1 <= len(args) <= 2:
        raise TxnSyntaxError(f"invalid txn request: {line} ({cmd} takes KEY [RANGE_END])")
    end = args[1] if len(args) == 2 else None
    try:
        if cmd == "del":
            return Op.delete(args[0], end, prefix=flags.get("prefix", False),
                             from_key=flags.get("from-key", False),
                             prev_kv=flags.get("prev-kv", False))
        return Op.get(args[0], end, prefix=flags.get("prefix", False),
                      from_key=flags.get("from-key", False),
                      limit=_int_flag(flags, "limit", line),
                      revision=_int_flag(flags, "rev", line),
                      sort_order=sort_order_of(flags["order"]) if "order" in flags else None,
                      sort_target=sort_target_of(flags["sort-by"]) if "sort-by" in flags
                      else None,
                      keys_only=flags.get("keys-only", False),
                      count_only=flags.get("count-only", False))
    except ValueError as exc:
        raise TxnSyntaxError(f"invalid txn request: {line} ({exc})") from None


# --------------------------------------------------------------------------- the whole text


def _sections(text: str) -> list[list[str]]:
    """The stripped non-blank lines of up to three blank-line-separated sections. The end
    of input ends the current section (etcdctl insists on the blank line; forgiving that
    costs nothing). Anything after the third section is an error."""
    sections: list[list[str]] = [[]]
    for raw in text.splitlines():
        line = raw.strip()
        if line:
            if len(sections) > 3:
                raise TxnSyntaxError(f"unexpected input after the failure requests: {line}")
            sections[-1].append(line)
        else:
            sections.append([])
    return (sections + [[], [], []])[:3]


def parse_txn(text: str) -> ParsedTxn:
    """Compares, success requests and failure requests of etcdctl's txn text."""
    compares, success, failure = _sections(text)
    return ParsedTxn(tuple(parse_compare(c) for c in compares),
                     tuple(parse_request(r) for r in success),
                     tuple(parse_request(r) for r in failure))


# --------------------------------------------------------------------------- output


def kv_lines(kvs: Iterable[KeyValue], keys_only: bool = False) -> list[bytes]:
    """etcdctl's simple form of keys: the key, then (unless keys_only) the value."""
    lines: list[bytes] = []
    for kv in kvs:
        lines.append(kv.key)
        if not keys_only:
            lines.append(kv.value)
    return lines


def response_lines(response: Any) -> list[bytes]:
    """One txn response as etcdctl prints it (a nested txn: its SUCCESS/FAILURE block)."""
    if isinstance(response, PutResult):
        return [b"OK", *kv_lines([response.prev_kv] if response.prev_kv else [])]
    if isinstance(response, DeleteResult):
        return [str(response.deleted).encode(), *kv_lines(response.prev_kvs)]
    if isinstance(response, RangeResult):
        return kv_lines(response.kvs)
    if isinstance(response, TxnResult):
        return txn_lines(response)
    raise TypeError(f"unexpected txn response {response!r}")


def txn_lines(result: TxnResult) -> list[bytes]:
    """The whole answer: SUCCESS/FAILURE, then a blank line before each response."""
    lines = [b"SUCCESS" if result.succeeded else b"FAILURE"]
    for response in result.responses:
        lines.append(b"")
        lines.extend(response_lines(response))
    return lines
