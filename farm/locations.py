"""Where farm's files are by default: the cache directory and the config file, read from a mapping of environment
variables. Only `os` is imported: the `farm` command's client (farm/client.py) resolves the cache directory to find
its server before anything else of farm is loaded (farm.config costs a new process some 20 ms)."""

from __future__ import annotations

import os
from collections.abc import Mapping


def default_cache_dir(env: Mapping[str, str]) -> str:
    """$XDG_CACHE_HOME/farm, else ~/.cache/farm."""
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "farm")


def default_config_file(env: Mapping[str, str]) -> str | None:
    """$XDG_CONFIG_HOME/farm/config.toml (else ~/.config/farm/config.toml), from the variables of `env` only, so a
    configuration read from a given mapping does not depend on the caller's home."""
    base = env.get("XDG_CONFIG_HOME") or (os.path.join(env["HOME"], ".config") if env.get("HOME") else "")
    return os.path.join(base, "farm", "config.toml") if base else None


def config_file_of(env: Mapping[str, str]) -> str | None:
    """FARM_CONFIG if set (empty: none), else the default location when a file is there."""
    if "FARM_CONFIG" in env:
        return env["FARM_CONFIG"] if env["FARM_CONFIG"].strip() else None
    default = default_config_file(env)
    return default if default is not None and os.path.isfile(default) else None


def setting_name(key: str) -> str:
    """The variable a config file's key sets: `cache_dir` and `FARM_CACHE_DIR` both set FARM_CACHE_DIR."""
    return key if key.startswith("FARM_") else f"FARM_{key.upper()}"


def cache_dir(env: Mapping[str, str]) -> str | None:
    """The cache directory FarmConfig.from_env(env) takes (FARM_CACHE_DIR, over the config file's, over the default),
    as given (it may be relative); None when the config file cannot be read: the command itself will say why."""
    text = env.get("FARM_CACHE_DIR", "").strip()
    if text:
        return text
    file = config_file_of(env)
    if file is not None:
        import tomllib  # only with a config file: most runs have none

        try:
            with open(file, "rb") as stream:
                document = tomllib.load(stream)
        except (OSError, ValueError):  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
            return None
        for key, value in document.items():
            if setting_name(key) == "FARM_CACHE_DIR" and str(value).strip():
                return str(value).strip()
    return default_cache_dir(env)
