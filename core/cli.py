"""The `sensorium` command: run the agent, list plugins, probe the kernel, manage policies, stream events."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click

from sensorium import __version__


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Sensorium: eBPF security observability and enforcement."""


@cli.command()
def version() -> None:
    """Print the version."""
    click.echo(f"sensorium {__version__}")


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Agent config (YAML).")
@click.option("--network", is_flag=True, default=None, help="Load the built-in network connection policy.")
@click.option("-o", "--output", type=click.Choice(["json", "compact"]), default=None,
              help="Format of the default stdout exporter (when the config names no exporters).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
@click.option("--shutdown-grace", "shutdown_grace_s", type=click.FloatRange(0, 3600), default=5.0, show_default=True,
              help="Seconds from SIGTERM to exit: exporters drain until then; what is left is counted and logged.")
def run(config_path: str | None, network: bool | None, output: str | None, log_level: str | None,
        shutdown_grace_s: float) -> None:
    """Run the agent on this host (embedded defaults: exec sensor, JSON lines to stdout)."""
    from sensorium.config import ExporterItem, load_config
    from sensorium.yamlsrc import SourceError

    try:
        cfg = load_config(config_path)
    except SourceError as exc:
        raise click.ClickException(f"invalid config: {exc}") from None
    if network is not None:
        cfg.network = network
    if output == "compact":
        cfg.exporters = [
            ExporterItem(**{**e.model_dump(), "format": "compact"}) if e.type == "stdout" else e for e in cfg.exporters
        ]
    _setup_logging(log_level or cfg.log_level)
    from sensorium.agent import Agent

    try:
        agent = Agent(cfg, shutdown_grace_s=shutdown_grace_s)
        agent.run_forever()
    except (SourceError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        # A path or port the agent cannot use (a socket directory it cannot create, a port in use): the
        # operator's to fix, so one line saying which, not a traceback.
        where = f" ({exc.filename})" if exc.filename else ""
        raise click.ClickException(f"cannot start: {exc.strerror or exc}{where}") from None
    except Exception as exc:  # no traceback reaches the operator; it is in the debug log
        logging.getLogger("sensorium.cli").debug("agent failed", exc_info=True)
        raise click.ClickException(f"the agent failed: {type(exc).__name__}: {exc} "
                                   f"(--log-level debug shows the traceback)") from None


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Use this config's plugin allowlist.")
def plugins(as_json: bool, config_path: str | None) -> None:
    """List discovered sensor and exporter plugins and whether they loaded (and why not)."""
    from sensorium.config import load_config
    from sensorium.plugins import PluginRegistry
    from sensorium.yamlsrc import SourceError

    logging.disable(logging.CRITICAL)  # failures are shown in the table, not as log noise
    try:
        cfg = load_config(config_path)
    except SourceError as exc:
        raise click.ClickException(f"invalid config: {exc}") from None
    reg = PluginRegistry(cfg.plugins.allow, cfg.plugins.deny).discover()
    rows = reg.as_list()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        dist = f"{r['distribution'] or '?'} {r['version'] or ''}".strip()
        line = f"{r['kind']:<9} {r['name']:<14} {r['state']:<16} {dist}"
        if r.get("reason"):
            line += f"  -- {r['reason']}"
        click.echo(line)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def probe(as_json: bool) -> None:
    """Report which eBPF program types and attach points this kernel accepts."""
    from sensorium.bpf.probe import ensure_mounts, probe_kernel

    ensure_mounts()
    caps = probe_kernel()
    d: dict[str, Any] = caps.as_dict()
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    click.echo(f"kernel {d.get('release')}")
    for key in ("btf", "bpf_lsm", "kprobes", "tracefs", "bpffs", "securityfs", "cgroup2", "cgroup_v1"):
        if key in d:
            click.echo(f"  {key:<12} {d[key]}")
    click.echo("program types:")
    for name, res in d.get("program_types", {}).items():
        ok = res.get("ok")
        click.echo(f"  {name:<17} {'ok' if ok else 'no'}{'' if ok else '  (' + str(res.get('error')) + ')'}")
    click.echo("helpers and kfuncs:")
    for name, res in d.get("features", {}).items():
        ok = res.get("ok")
        click.echo(f"  {name:<17} {'ok' if ok else 'no'}{'' if ok else '  (' + str(res.get('error')) + ')'}")


def _register_optional_commands() -> None:
    try:
        from sensorium.cli_policy import register
    except ImportError:
        return
    register(cli)
    from sensorium.replay.cli import register as register_replay  # `policy replay` (docs/replay.md)
    register_replay(cli)


_register_optional_commands()


def main() -> None:
    cli(prog_name="sensorium")


if __name__ == "__main__":
    main()
