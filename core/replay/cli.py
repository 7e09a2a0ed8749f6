"""The ``sensorium policy replay`` command (added to the ``policy`` group by `register`)."""

from __future__ import annotations

import sys
from typing import Any

import click
import orjson

EXIT_UNDECIDED = 3  # the report was written, but some events could not be decided from the recording


def _policies(file: str, what: str) -> list[Any]:
    """Parse FILE exactly as ``policy check`` does (the agent's schema and rules)."""
    from sensorium.plugins import PluginRegistry
    from sensorium.policy import POLICY_LIMITS
    from sensorium.policy_rules import validate_policies
    from sensorium.yamlsrc import SourceError, decode, read_file

    reg = PluginRegistry().discover_quietly()
    try:
        data = sys.stdin.buffer.read(POLICY_LIMITS.max_bytes + 1) if file == "-" else read_file(file, POLICY_LIMITS)
        name = "<stdin>" if file == "-" else file
        return validate_policies(decode(data, name, POLICY_LIMITS), name, reg, scoping_supported=True)
    except SourceError as exc:
        # the policy's own refusal is `policy check`'s, word for word; the recording policy's says which it is
        raise click.ClickException(f"{what}{exc}") from None


def _when(text: str | None, opt: str) -> int | None:
    from sensorium.replay.records import parse_when

    if text is None:
        return None
    try:
        return parse_when(text)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=opt) from None


@click.command("replay")
@click.argument("policy_file", metavar="POLICY", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--events", "events_files", required=True, multiple=True,
              type=click.Path(dir_okay=False, allow_dash=True),
              help="Recorded events: JSON lines from the file exporter, or Tetragon's JSON export ('-': stdin; "
                   ".gz read as gzip). Repeat it for rotated files, oldest first.")
@click.option("--recorded-with", "recorded_with", type=click.Path(exists=True, dir_okay=False),
              help="The policy that made the recording: only its events are used, and its args say where each "
                   "argument sits (default: every hook event, args declared as in POLICY).")
@click.option("--since", help="Only events at or after this time: RFC 3339, or a duration before now (7d, 24h, 30m).")
@click.option("--until", help="Only events before this time (same forms as --since).")
@click.option("--mode", type=click.Choice(["enforcement", "monitoring"]), default=None,
              help="Replay in this mode (default: the policy's policy-mode option, else enforcement).")
@click.option("--examples", type=click.IntRange(0, 100), default=3, show_default=True,
              help="Example events kept per selector.")
@click.option("--unknown-ancestors", type=click.Choice(["undecided", "no-match"]), default="undecided",
              show_default=True, help="followChildren/followForks: an ancestor the recording does not show (it "
                                      "started before the recording) is undecided, or assumed not to match.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object (see docs/replay.md).")
def replay_command(policy_file: str, events_files: tuple[str, ...], recorded_with: str | None, since: str | None,
                   until: str | None, mode: str | None, examples: int, unknown_ancestors: str, as_json: bool) -> None:
    """What POLICY would have matched, posted, killed or overridden in recorded events.

    The recording must hold the calls the policy selects from: record with a policy on the same hooks
    without selectors (docs/replay.md). Exit 3 when some events could not be decided from what the
    recording carries (the report says which and why)."""
    from sensorium.replay.evaluate import ReplayRefused
    from sensorium.replay.records import read_events
    from sensorium.replay.report import Replay, render_text

    since_ns, until_ns = _when(since, "--since"), _when(until, "--until")
    if since_ns is not None and until_ns is not None and since_ns >= until_ns:
        raise click.BadParameter(f"{since!r} is not before --until {until!r}", param_hint="--since")
    policies = _policies(policy_file, "")
    recorders = _policies(recorded_with, "--recorded-with: ") if recorded_with else []
    try:
        rp = Replay(policies, mode=mode, recorded_with=recorders, since_ns=since_ns, until_ns=until_ns,
                    examples=examples, unknown_ancestors=unknown_ancestors)
    except ReplayRefused as e:
        raise click.ClickException(f"cannot replay: {e}") from None
    for events_file in events_files:
        try:
            rp.feed(read_events(events_file), "<stdin>" if events_file == "-" else events_file)
        except (OSError, EOFError) as e:
            raise click.ClickException(f"--events {events_file}: {getattr(e, 'strerror', None) or e}") from None
    res = rp.result()
    if as_json:
        click.echo(orjson.dumps(res).decode())
    else:
        for line in render_text(res):
            click.echo(line)
    if res["undecided"]:
        click.echo(f"replay incomplete: {res['undecided']} events could not be decided from the recording "
                   f"(reasons in the report)", err=True)
        sys.exit(EXIT_UNDECIDED)


def register(cli_group: click.Group) -> None:
    """Add ``replay`` to the ``policy`` group of ``cli_group``."""
    group = cli_group.commands.get("policy")
    if isinstance(group, click.Group):
        group.add_command(replay_command)
