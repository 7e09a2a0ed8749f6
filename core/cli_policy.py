"""CLI commands that talk to the running agent over its local API: ``policy ...``, ``events``, ``status``.

`register(cli_group)` adds them to the ``sensorium`` click group (called by sensorium.cli).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from sensorium.bpf.memory import PROJECTED_CPUS, PROJECTED_KEY

DEFAULT_SOCKET = "/run/sensorium/api.sock"
SOCKET_ENV = "SENSORIUM_SOCKET"
EVENT_TYPES = ("process_exec", "process_exit", "process_kprobe", "process_tracepoint", "process_uprobe",
               "process_lsm", "rate_limit_info")



def _from_lists(items: Any) -> str:
    """" (362 from 1 list call)" when items were expanded from "list:" calls (each such call is one hook)."""
    listed = [getattr(i, "from_list", None) for i in items]
    calls = {o for o in listed if o is not None}
    if not calls:
        return ""
    n = sum(o is not None for o in listed)
    return f" ({n} from {len(calls)} list call{'s' if len(calls) > 1 else ''})"

def _read_policy(file: str) -> tuple[str, str]:
    """(name, text) of a policy file or ``-`` (stdin), checked as the agent will: the same size cap, UTF-8
    and NUL checks with the same messages, so `check` and `add` refuse bad bytes in the same words."""
    from sensorium.policy import POLICY_LIMITS
    from sensorium.yamlsrc import SourceError, decode, read_file

    try:
        if file == "-":
            name, data = "<stdin>", sys.stdin.buffer.read(POLICY_LIMITS.max_bytes + 1)
        else:
            name = str(Path(file))
            data = read_file(file, POLICY_LIMITS)
        return name, decode(data, name, POLICY_LIMITS)
    except SourceError as exc:
        raise click.ClickException(str(exc)) from None


def _socket_path(socket_opt: str | None, config_path: str | None) -> str:
    if socket_opt:
        return socket_opt
    if config_path:
        from sensorium.config import load_config
        from sensorium.yamlsrc import SourceError

        try:
            return str(load_config(config_path).api.socket)
        except SourceError as exc:
            raise click.ClickException(f"invalid config: {exc}") from None
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def _socket_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--config", "config_path", type=click.Path(dir_okay=False),
                     help="Agent config, to find the API socket (api.socket).")(f)
    f = click.option("--socket", "socket_path", default=None, metavar="PATH",
                     help=f"API socket of the running agent (default ${SOCKET_ENV} or {DEFAULT_SOCKET}).")(f)
    return f


def _client(socket_path: str | None, config_path: str | None) -> Any:
    from sensorium.api import ApiClient

    path = _socket_path(socket_path, config_path)
    try:
        return ApiClient(path).connect()
    except FileNotFoundError:
        raise click.ClickException(f"no agent is listening at {path} (is `sensorium run` running?)") from None
    except PermissionError:
        raise click.ClickException(f"permission denied on {path}: the Sensorium API is for root only") from None
    except ConnectionRefusedError:
        raise click.ClickException(f"the agent at {path} is not accepting connections") from None
    except OSError as exc:
        raise click.ClickException(f"cannot connect to {path}: {exc.strerror or exc}") from None


def _call(socket_path: str | None, config_path: str | None, method: str, params: dict[str, Any] | None = None) -> Any:
    from sensorium.api import ApiError

    with _client(socket_path, config_path) as c:
        try:
            return c.call(method, params)
        except ApiError as exc:
            raise click.ClickException(exc.message) from None
        except (ConnectionError, OSError) as exc:
            raise click.ClickException(f"lost the connection to the agent: {exc}") from None


def _hooks_summary(p: dict[str, Any]) -> str:
    mechs = []
    for h in p.get("hooks", []):
        m = h.get("mechanism")
        if m and m not in mechs:
            mechs.append(m)
    return ", ".join(mechs) or "-"


def _scope_summary(sc: dict[str, Any]) -> str:
    """``2 pods (ns/a, ns/b), 4 cgroups, host; 1 scope update error: ...``"""
    pods = sc.get("pods") or []
    shown = ", ".join(pods[:5]) + (f", +{len(pods) - 5}" if len(pods) > 5 else "")
    out = f"{len(pods)} pods{' (' + shown + ')' if pods else ''}, {sc.get('cgroups', 0)} cgroups"
    if sc.get("host"):
        out += ", host"
    if sc.get("waiting"):
        out += f", {len(sc['waiting'])} without a cgroup yet"
    if sc.get("errors"):
        out += f"; {sc['errors']} scope update errors, last: {sc.get('last_error')}"
    return out


def _persistence_summary(p: dict[str, Any]) -> str:
    """``yes, pinned at DIR`` / ``no: HOOK (why)``: whether the policy's blocks outlive the agent."""
    if p.get("adopted") and p.get("state") != "enabled":
        dirs = ", ".join(a.get("pin_dir", "?") for a in p["adopted"])
        return f"the pins of a previous agent keep enforcing ({dirs}); policy delete lifts them"
    if p.get("persistent") is True:
        out = f"yes, pinned at {p.get('pin_dir')}"
    else:
        gaps = [f"{h.get('hook')} ({h.get('persistence')})" for h in p.get("hooks", []) if h.get("persistent") is False]
        out = "no: " + "; ".join(gaps) if gaps else "no"
    if p.get("replaced"):
        out += f"; replaced {len(p['replaced'])} generation(s) of a previous agent"
    return out


def _print_policies(rows: list[dict[str, Any]]) -> None:
    """The human form of ``policy list``: one line per policy, then its scope, persistence and hooks."""
    click.echo(f"{'ID':>3} {'NAME':<32} {'STATE':<9} {'MODE':<12} {'EVENTS':>8} {'ERRORS':>6} {'KMEM':>9} "
               f"{f'@{PROJECTED_CPUS}CPU':>9}  MECHANISMS")
    for p in rows:
        key = p.get("key") or p["name"]
        click.echo(f"{p['id']:>3} {key[:32]:<32} {p['state']:<9} {p['mode']:<12} {p['events']:>8} "
                   f"{p['errors']:>6} {_fmt_bytes(p['kernel_memory_bytes']):>9} "
                   f"{_fmt_bytes(p.get(PROJECTED_KEY, 0)):>9}  {_hooks_summary(p)}")
        if p.get("scope"):
            click.echo(f"      scope: {_scope_summary(p['scope'])}")
        if p.get("persistent") is not None or p.get("adopted"):
            click.echo(f"      persistent: {_persistence_summary(p)}")
        for h in p.get("hooks", []):
            note = f"  ({h['note']})" if h.get("note") else ""
            if h.get("persistent") is False:
                note += f"  [not persistent: {h.get('persistence')}]"
            click.echo(f"      {h.get('hook', h.get('section'))}: {h.get('mechanism') or '-'}{note}")
        for w in p.get("warnings") or ():
            click.echo(f"      warning: {w}")
        if p.get("error"):
            click.echo(f"      error: {p['error']}")


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def register(cli_group: click.Group) -> None:
    """Add ``policy``, ``events`` and ``status`` to the sensorium command group."""

    @cli_group.group()
    def policy() -> None:
        """Manage the TracingPolicies of the running agent."""

    @policy.command("add")
    @click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
    @click.option("--mode", type=click.Choice(["enforcement", "monitoring"]), default=None,
                  help="Load in this mode (default: the policy's policy-mode option, else enforcement).")
    @_socket_options
    def policy_add(file: str, mode: str | None, socket_path: str | None, config_path: str | None) -> None:
        """Load the policies of FILE (all of them, or none)."""
        name, text = _read_policy(file)
        params: dict[str, Any] = {"text": text, "file": name}
        if mode:
            params["mode"] = mode
        res = _call(socket_path, config_path, "policy.add", params)
        for n in res.get("added", []):
            click.echo(f"policy {n} added")

    @policy.command("check")
    @click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
    def policy_check(file: str) -> None:
        """Validate FILE offline (nothing is loaded, no agent needed): the installed sensors' schemas and every
        rule that holds on any kernel, so what `check` calls valid is refused by `add` only for a reason of
        the agent's kernel or config (a missing function, a sensor not enabled)."""

        from sensorium.plugins import PluginRegistry
        from sensorium.policy_rules import validate_policies
        from sensorium.yamlsrc import SourceError

        name, text = _read_policy(file)
        reg = PluginRegistry().discover_quietly()
        try:
            # Selectors are validated too; whether an agent can serve them (Kubernetes on) is its business.
            policies = validate_policies(text, name, reg, scoping_supported=True)
        except SourceError as exc:
            raise click.ClickException(str(exc)) from None
        for p in policies:
            scoped = "; scoped: needs an agent with Kubernetes" if p.scoped else ""
            counts = ", ".join(f"{s.key}: {len(s.items)}{_from_lists(s.items)}" for s in p.sections)
            click.echo(f"{p.key}: valid ({counts}; {p.mode}{scoped})")
            for w in p.warnings:
                click.echo(f"warning: {w}", err=True)
            if p.scope_requirement:
                click.echo(f"warning: {p.scope_requirement}", err=True)

    @policy.command("delete")
    @click.argument("name")
    @_socket_options
    def policy_delete(name: str, socket_path: str | None, config_path: str | None) -> None:
        """Unload and forget policy NAME (namespace/name for a TracingPolicyNamespaced)."""
        _call(socket_path, config_path, "policy.delete", {"name": name})
        click.echo(f"policy {name} deleted")

    @policy.command("list")
    @click.option("--json", "as_json", is_flag=True, help="JSON output (every field).")
    @_socket_options
    def policy_list(as_json: bool, socket_path: str | None, config_path: str | None) -> None:
        """List loaded policies: state, mode, mechanism per hook, events, errors, kernel memory."""
        rows = _call(socket_path, config_path, "policy.list")
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        if not rows:
            click.echo("no policies loaded")
        else:
            _print_policies(rows)
        # Blocks a previous agent pinned for a policy this one could not load (its kept record is unreadable):
        # they enforce, so the listing says so even though no policy row stands for them.
        try:
            enf = (_call(socket_path, config_path, "status") or {}).get("enforcement") or {}
        except click.ClickException:  # the listing above stands on its own
            enf = {}
        for g in enf.get("adopted_only") or []:
            click.echo(f"pinned by a previous agent (pid {g.get('pinned_by_pid', '?')}) and still enforcing, not "
                       f"loaded by this agent: {g.get('policy')} at {g.get('pin_dir')}; `sensorium policy delete "
                       f"{g.get('policy')}` lifts it")
        for f in (enf.get("start") or {}).get("failed") or []:
            if not f.get("policy"):
                click.echo(f"{f.get('error')}")

    @policy.command("enable")
    @click.argument("name")
    @_socket_options
    def policy_enable(name: str, socket_path: str | None, config_path: str | None) -> None:
        """Load a disabled policy again."""
        _call(socket_path, config_path, "policy.enable", {"name": name})
        click.echo(f"policy {name} enabled")

    @policy.command("disable")
    @click.argument("name")
    @_socket_options
    def policy_disable(name: str, socket_path: str | None, config_path: str | None) -> None:
        """Unload a policy's programs but keep it (enable brings it back)."""
        _call(socket_path, config_path, "policy.disable", {"name": name})
        click.echo(f"policy {name} disabled")

    @policy.command("set-mode")
    @click.argument("name")
    @click.argument("mode", type=click.Choice(["enforcement", "monitoring"]))
    @_socket_options
    def policy_set_mode(name: str, mode: str, socket_path: str | None, config_path: str | None) -> None:
        """Switch a policy between enforcement and monitoring, live."""
        _call(socket_path, config_path, "policy.set_mode", {"name": name, "mode": mode})
        click.echo(f"policy {name} is now in {mode} mode")

    @cli_group.command("events")
    @click.option("--event-type", "event_types", multiple=True, type=click.Choice(EVENT_TYPES, case_sensitive=False),
                  help="Only these event types (repeatable).")
    @click.option("--binary-regex", "binary_regex", multiple=True,
                  help="Only processes whose binary matches (repeatable: any).")
    @click.option("--namespace", "namespaces", multiple=True,
                  help="Only pods in this namespace (repeatable; '' for host).")
    @click.option("--pod-regex", "pod_regex", multiple=True, help="Only pods whose name matches (repeatable: any).")
    @click.option("--policy-name", "policy_names", multiple=True, help="Only events of this policy (repeatable).")
    @click.option("-o", "--output", type=click.Choice(["json", "compact"]), default="json", show_default=True)
    @click.option("--queue-size", type=click.IntRange(16, 1 << 20), default=8192, show_default=True,
                  help="Events the agent buffers for this client before dropping.")
    @_socket_options
    def events(event_types: tuple[str, ...], binary_regex: tuple[str, ...], namespaces: tuple[str, ...],
               pod_regex: tuple[str, ...], policy_names: tuple[str, ...], output: str, queue_size: int,
               socket_path: str | None, config_path: str | None) -> None:
        """Stream events from the running agent (filtered in the agent)."""
        from sensorium.api import ApiError

        filters: dict[str, Any] = {
            "event_set": [t.lower() for t in event_types] or None,
            "binary_regex": list(binary_regex) or None,
            "namespace": list(namespaces) or None,
            "pod_regex": list(pod_regex) or None,
            "policy_names": list(policy_names) or None,
        }
        fmt = _compact_formatter() if output == "compact" else None
        out = sys.stdout
        c = _client(socket_path, config_path)
        try:
            for item in _stream(c, filters, queue_size):
                if "stream" in item and len(item) == 1:
                    dropped = (item["stream"] or {}).get("dropped")
                    click.echo(f"sensorium: {dropped} events dropped (this client read too slowly)", err=True)
                    continue
                out.write((fmt(item) if fmt else json.dumps(item, separators=(",", ":"))) + "\n")
                out.flush()
        except ApiError as exc:
            raise click.ClickException(exc.message) from None
        except (KeyboardInterrupt, BrokenPipeError):
            pass
        finally:
            c.close()

    if "status" not in cli_group.commands:

        @cli_group.command("status")
        @click.option("--json", "as_json", is_flag=True, help="JSON output.")
        @_socket_options
        def status(as_json: bool, socket_path: str | None, config_path: str | None) -> None:
            """Status of the running agent: sensors, pipeline, policies."""
            st = _call(socket_path, config_path, "status")
            if as_json:
                click.echo(json.dumps(st, indent=2))
                return
            click.echo(f"sensorium {st.get('version')} on {st.get('node_name')}, pid {st.get('pid')}, "
                       f"up {st.get('uptime_s')}s")
            for s in st.get("sensors", []):
                why = f"  -- {s['reason']}" if s.get("reason") else ""
                click.echo(f"  sensor {s.get('name', '?'):<12} {s.get('state')}{why}")
            exporters = ((st.get("pipeline") or {}).get("exporters") or {})
            width = max((len(n) for n in exporters), default=0)
            for name, e in exporters.items():
                click.echo(f"  exporter {name:<{width}} {e.get('state'):<8} " + _exporter_books(e))
            stream = ((st.get("api") or {}).get("stream")) or None
            if stream:
                click.echo(f"  api stream   {stream.get('subscribers', 0)} subscribers, "
                           f"holding {stream.get('held_events', 0)} of {stream.get('max_total_events')} events; "
                           f"dropped: {_by_reason(stream.get('dropped_by_reason'))}")
            enf = st.get("enforcement") or {}
            if enf.get("persist"):
                click.echo(f"  enforcement  persistent: pins under {enf.get('pin_dir')}, policies kept in "
                           f"{enf.get('state_dir')}; {enf.get('note')}")
                start = enf.get("start") or {}
                if any(start.get(k) for k in ("restored", "failed", "replaced", "removed")):
                    click.echo(f"  enforcement  at start: {len(start.get('restored', []))} kept policies restored, "
                               f"{len(start.get('failed', []))} failed, {len(start.get('replaced', []))} pinned "
                               f"generations replaced, {len(start.get('removed', []))} removed")
                for f in start.get("failed") or []:
                    click.echo(f"  enforcement  not restored: {f.get('error')}")
                for g in enf.get("adopted_only") or []:
                    click.echo(f"  enforcement  still pinned by pid {g.get('pinned_by_pid', '?')}, not loaded: "
                               f"{g.get('policy')} at {g.get('pin_dir')} (policy delete lifts it)")
                for ig in start.get("ignored") or []:
                    click.echo(f"  enforcement  left alone under the pin root: {ig.get('path')}: {ig.get('why')}")
            elif enf:
                click.echo(f"  enforcement  not persistent: {enf.get('note')}")
            for p in st.get("policies", []):
                persist = {True: " persistent", False: " NOT persistent"}.get(p.get("persistent"), "")
                click.echo(f"  policy {p.get('key') or p['name']:<24} {p['state']} {p['mode']} events={p['events']} "
                           f"errors={p['errors']}{persist}")
            for e in st.get("policy_directory_errors", []):
                click.echo(f"  policy file refused: {e.get('error')}")
            acts = st.get("actions") or {}
            for pname, per in sorted((acts.get("policies") or {}).items()):
                for aname, a in sorted(per.items()):
                    err = f"; last error: {a['last_error']}" if a.get("last_error") else ""
                    click.echo(f"  action {aname:<9} policy {pname}: sent {a.get('sent', 0)}, "
                               f"failed {a.get('failed', 0)}, dropped {_by_reason(a.get('dropped'))}{err}")


def _by_reason(counts: dict[str, int] | None) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted((counts or {}).items()) if v) or "none"


def _exporter_books(e: dict[str, Any]) -> str:
    """One line of an exporter's books: where its events went, and why some did not."""
    line = (f"delivered {e.get('delivered', 0)}, unconfirmed {e.get('unconfirmed', 0)}, queued {e.get('queued', 0)}, "
            f"dropped {e.get('dropped', 0)} ({_by_reason(e.get('dropped_by_reason'))}), "
            f"retried {e.get('retried', 0)} ({_by_reason(e.get('retried_by_reason'))})")
    if e.get("last_error") and e.get("state") != "running":
        line += f"; last error: {e['last_error']}"
    return line


def _stream(c: Any, filters: dict[str, Any], queue_size: int) -> Iterator[dict[str, Any]]:
    yield from c.events(filters, queue_size=queue_size)


def _compact_formatter() -> Callable[[dict[str, Any]], str]:
    from sensorium.compact import compact
    from sensorium.events import EVENT_KINDS, Event

    def fmt(item: dict[str, Any]) -> str:
        kind = next((k for k in item if k in EVENT_KINDS), None)
        if kind is None:
            return json.dumps(item, separators=(",", ":"))
        return compact(Event(kind, item[kind], str(item.get("node_name", "")), 0))

    return fmt
