"""Errors the user can fix: the CLI prints their message alone, without a traceback."""

from __future__ import annotations


class InputError(RuntimeError):
    """Bad input or a setting that cannot work (a file, a folder, a run directory, a device)."""


class ConfigError(InputError, ValueError):
    """A setting that is out of bounds or unknown, found when the config is validated."""
