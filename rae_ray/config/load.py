"""Loading a run configuration: YAML files, `--set key=value` overrides, errors that name the key, and the
config as it goes into the manifest."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from rae_ray.config.models import ConfigError, RunConfig


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(pairs: list[str]) -> list[tuple[str, Any]]:
    """`key.sub=value` strings -> (dotted key, YAML-parsed value)."""
    out = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        out.append((key.strip(), yaml.safe_load(raw) if raw.strip() else ""))
    return out


def _format_validation_error(source: str, error: ValidationError) -> str:
    lines = [f"invalid config {source}:"]
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        lines.append(f"  {where}: {item['msg']}")
    return "\n".join(lines)


def config_from_dict(data: dict[str, Any], overrides: list[str] = (), source: str = "(dict)") -> RunConfig:
    data = copy.deepcopy(dict(data or {}))
    for key, value in parse_overrides(list(overrides)):
        _set_dotted(data, key, value)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(source, error)) from None


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config {path} is not valid YAML: {error}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    return config_from_dict(data or {}, overrides, source=str(path))


def redacted(config: RunConfig) -> dict[str, Any]:
    """The config as JSON-able data for the manifest; secrets are never part of it (keys live in the env)."""
    return config.model_dump(mode="json")
