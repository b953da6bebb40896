"""Data-driven interaction scripts for the Raft core.

The idea follows etcd-io/raft's "interaction tests": a text script drives a small in-memory
cluster of real RawNodes step by step, and after every step the script records what the step
printed. The test (tests/raft/test_interactions.py) replays each script and compares; after an
intended change, `pytest tests/raft/test_interactions.py --rewrite` regenerates the expected
output in place, and `git diff` shows what the change did to the protocol's behaviour.

Script grammar (one file under tests/raft/testdata/)::

    script  := (comment | blank | block)*
    comment := "#" text NEWLINE                 kept verbatim by --rewrite
    block   := command NEWLINE [ "----" NEWLINE output ]
    output  := (line NEWLINE)*                  ends at the first blank line or end of file
    command := name arg*                        shell-like quoting (shlex), e.g. propose 1 "a b"
    arg     := word | key=value | node | src->dst

A block written without "----" is a command whose output is not recorded yet: the check fails
and --rewrite fills it in. Output never contains blank lines (a command that prints nothing
prints "ok"). Nodes are named n1, n2, ...; a command accepts `1` or `n1`.

Commands (N, M are nodes; [..] optional; ... repeats):

    quiet COMMAND...        run COMMAND, print only "ok" (or its error): for set-up steps
    add-nodes COUNT [election-ticks=10 heartbeat-ticks=1 pre-vote=true check-quorum=true
                     max-inflight=8 max-msg-bytes=.. seed=..]   create n1..nCOUNT (once)
    campaign N              tick N until it starts an election (its own randomized timeout)
    tick N [COUNT]          COUNT ticks (default 1)
    tick-election N...      election-ticks ticks each
    tick-heartbeat N...     heartbeat-ticks ticks each
    propose N DATA...       one batch, one entry per DATA; prints index/term or the error
    read-index N RID        ask for a read point (the ReadState shows up in a Ready)
    process-ready [N...]    take each node's Ready, print it, carry it out, advance
    deliver-msgs [SEL...]   step queued messages into their destinations (all when no SEL)
    drop-msgs [SEL...]      discard queued messages (all when no SEL)
    msgs [SEL...]           list queued messages
    stabilize [N...]        process Readys and deliver messages until nothing moves
    isolate N...            cut every link to and from N
    cut N->M...             cut one direction of a link
    heal [N...]             restore all links (or only those of N)
    crash N                 stop N: what it did not persist is lost, queued messages to it too
    restart N               a new RawNode on N's storage and state machine
    resync N                N restarts on an empty data dir (passive until a leader reaches it)
    compact N INDEX         drop N's log up to INDEX (its state machine keeps the effect)
    report-unreachable N M  N's runtime lost messages to M
    fail-snapshots on|off   snapshot streams fail (reported to the leader as such)
    step N TYPE from=M [field=value...]   step a hand-made message into N
    status [N...]           role, term, vote, leader, commit, applied, log range, progress
    log N...                durable hard state, snapshot, stable and unstable entries
    applied [N...]          the data a node's state machine has applied

Message selectors (SEL): `2` (to n2), `1->2` (from n1 to n2), `type=APP` or `type=APP,SNAP`.

What process-ready does, as the runtime does (kvstore/server/node.py): install the snapshot
(if any), persist hard state and entries to MemoryStorage in one step, apply committed
entries to the node's state machine, send the messages (a message on a cut link or to a
crashed node is marked dropped), advance. Nothing is fed to a node between its ready() and
advance(), as RawNode requires. A SNAP message from a leader stands for a snapshot stream:
after advance, the leader's state machine at its applied index is staged for the follower, a
SNAP message with that index/term is queued, and report_snapshot is called on the leader (as
tests/raft/harness.py does); a stream over a cut link or to a crashed node, or while
fail-snapshots is on, is reported as failed. Lines starting with "log:" are the core's own log
events. `status` and `log` read a few core fields directly (role, term, progress, unstable
entries), the only places that do.

Printing is generic where it can be (message fields are printed when they differ from their
defaults, Ready fields unknown to the printer are printed by name), so additions to the core
show up in the output instead of breaking the interpreter.

Modules: this one reads a script, runs it and compares or rewrites it (with the diff report);
tests/raft/interaction_cluster.py is the simulated cluster and its commands;
tests/raft/interaction_format.py prints values, messages, Readys and the status/log views.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path

from tests.raft.interaction_cluster import Interaction, ScriptError

__all__ = ["Block", "Interaction", "Script", "ScriptError", "ScriptResult", "parse_script",
           "render_script", "run_script"]

SEPARATOR = "----"


# -- the script file -------------------------------------------------------------------------


@dataclass
class Block:
    line: int  # 1-based line number of the command
    command: str
    expected: list[str] | None  # None: the command has no "----" yet


@dataclass
class Script:
    path: Path
    text: str
    items: list[str | Block]  # verbatim lines (comments, blank lines) and blocks

    @property
    def blocks(self) -> list[Block]:
        return [i for i in self.items if isinstance(i, Block)]


def parse_script(text: str, path: Path) -> Script:
    lines = text.splitlines()
    items: list[str | Block] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            items.append(line)
            i += 1
            continue
        if line.strip() == SEPARATOR:
            raise ScriptError(f"{path}:{i + 1}: '----' without a command before it")
        block = Block(i + 1, line.strip(), None)
        i += 1
        if i < len(lines) and lines[i].strip():
            if lines[i].strip() != SEPARATOR:
                raise ScriptError(
                    f"{path}:{i + 1}: expected '----' or a blank line after the command "
                    f"on line {block.line}, got {lines[i]!r}"
                )
            i += 1
            expected: list[str] = []
            while i < len(lines) and lines[i].strip():
                expected.append(lines[i].rstrip())
                i += 1
            block.expected = expected
        items.append(block)
    return Script(path, text, items)


def render_script(script: Script, outputs: dict[int, list[str]]) -> str:
    """The script text with each block's expected output replaced by `outputs[line]`."""
    out: list[str] = []
    for item in script.items:
        if isinstance(item, str):
            out.append(item)
        else:
            out.extend([item.command, SEPARATOR, *outputs[item.line]])
    return "\n".join(out) + "\n"


def _display_path(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


@dataclass
class ScriptResult:
    script: Script
    rendered: str  # the script as it should read given what the commands printed
    mismatches: list[Block] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.rendered == self.script.text

    def report(self) -> str:
        """Where the output differs, and a unified diff of the file (expected -> actual)."""
        path = _display_path(self.script.path)
        lines = [f"{path}: output differs from the expected output in "
                 f"{len(self.mismatches)} block(s); rerun with --rewrite to accept it"]
        lines += [f"  {path}:{b.line}: {b.command}" for b in self.mismatches]
        if not self.mismatches:
            lines.append("  only the layout differs (trailing whitespace, final newline, ...)")
        diff = difflib.unified_diff(
            self.script.text.splitlines(),
            self.rendered.splitlines(),
            fromfile=f"{path} (expected)",
            tofile=f"{path} (actual)",
            lineterm="",
        )
        return "\n".join([*lines, "", *diff])

    def rewrite(self) -> bool:
        """Write the actual output into the file; True if it changed."""
        if self.ok:
            return False
        self.script.path.write_text(self.rendered)
        return True


def run_script(path: Path) -> ScriptResult:
    """Run every block of the script at `path` in a fresh cluster."""
    script = parse_script(path.read_text(), path)
    interp = Interaction()
    outputs: dict[int, list[str]] = {}
    mismatches: list[Block] = []
    for block in script.blocks:
        try:
            out = interp.run(block.command)
        except ScriptError as err:
            raise ScriptError(f"{_display_path(path)}:{block.line}: {block.command}: {err}") \
                from None
        except Exception as err:  # a broken core invariant, typically an AssertionError
            raise ScriptError(
                f"{_display_path(path)}:{block.line}: {block.command}: raised "
                f"{type(err).__name__}: {err}"
            ) from err
        outputs[block.line] = out
        if out != block.expected:
            mismatches.append(block)
    return ScriptResult(script, render_script(script, outputs), mismatches)
