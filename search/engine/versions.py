"""The versions a run depends on: this package's and its libraries', printed by `--version` and kept in run.json.

A resumed run compares them with the ones it started with and says which library moved: a replay that
no longer matches (an agent proposing other candidates) is then explained, not a mystery.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import platform
import sys
from collections.abc import Mapping

#: the distributions whose versions a run records, in the order `--version` prints them
LIBRARIES = ("torch", "torchvision", "optuna", "ray", "timm", "numpy")
NOT_INSTALLED = "not installed"


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return NOT_INSTALLED


def versions() -> dict[str, str]:
    """{name: version} of Python, prunesearch and `LIBRARIES` (read from the installed metadata: nothing is imported)."""
    return {"python": platform.python_version(), "prunesearch": _version("prunesearch"),
            **{name: _version(name) for name in LIBRARIES}}


def version_text() -> str:
    """What `--version` prints: the package's version, then its libraries'."""
    found = versions()
    return f"prunesearch {found['prunesearch']} (" + ", ".join(
        f"{name} {found[name]}" for name in ("python", *LIBRARIES)) + ")"


def _release(version: str) -> str:
    return version.split("+")[0]  # older runs kept torch.__version__, with its build label (2.14.1+cu130)


def moved(before: Mapping[str, str] | None, now: Mapping[str, str]) -> list[str]:
    """The libraries whose version differs between `before` (a run's run.json) and `now`, as 'name a -> b'."""
    if not before:
        return []
    return [f"{name} {before[name]} -> {now.get(name, NOT_INSTALLED)}" for name in before
            if _release(str(before[name])) != _release(now.get(name, NOT_INSTALLED))]


class VersionAction(argparse.Action):
    """`--version`: prints `version_text()` on one line (argparse's own action wraps it) and exits."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text(), file=sys.stdout)
        parser.exit()
