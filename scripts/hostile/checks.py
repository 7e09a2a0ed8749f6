"""What `sensorium policy check` and `sensorium run --config` run on an input (shared with the tests)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any


def registry() -> Any:
    from sensorium.plugins import PluginRegistry

    logging.disable(logging.CRITICAL)
    try:
        return PluginRegistry().discover()
    finally:
        logging.disable(logging.NOTSET)


def check_policy(data: bytes, name: str, reg: Any) -> list[Any]:
    """`sensorium policy check`: the loader's byte checks, parsing, then the kernel-independent rules."""
    from sensorium.policy import POLICY_LIMITS
    from sensorium.policy_rules import validate_policies
    from sensorium.yamlsrc import decode

    return validate_policies(decode(data, name, POLICY_LIMITS), name, reg, scoping_supported=True)


def check_config(path: Path, reg: Any) -> Any:
    """What `sensorium run --config` validates before it starts anything: the config, then each exporter
    item and sensor section against its plugin's options model (unknown plugin names are the agent's)."""
    from sensorium.config import load_config, validate_exporter_options, validate_sensor_options

    cfg = load_config(path)
    for i, item in enumerate(cfg.exporters):
        spec = reg.exporters.get(item.type)
        if spec is not None and spec.options is not None:
            validate_exporter_options(item, i, spec.options, cfg.source)
    for name, section in cfg.sensors.items():
        spec = reg.sensors.get(name)
        if spec is not None:
            validate_sensor_options(name, dict(section), spec.options, cfg.source)
    return cfg
