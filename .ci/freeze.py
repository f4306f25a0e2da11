"""Prints the exact versions of prunesearch's installed dependencies (the closure of its requirements): constraints.txt.

    python .ci/freeze.py dev > constraints.txt      # after a green suite on the newest releases (.ci/run latest)

Only what the named extras pull in is listed, each `name==version`, sorted, so the file says what the suite
was tested with and nothing that merely happens to be installed on this machine.
"""
from __future__ import annotations

import importlib.metadata
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def closure(root: str, extras: list[str]) -> dict[str, str]:
    """{canonical name: installed version} of everything `root[extras]` requires, transitively."""
    found: dict[str, str] = {}
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset(extras))]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, wanted = todo.pop()
        if (name, wanted) in seen:
            continue
        seen.add((name, wanted))
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # an optional dependency not installed here: not tested, not pinned
        if canonicalize_name(name) != canonicalize_name(root):
            found[canonicalize_name(name)] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            environments = [{"extra": e} for e in wanted] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in environments):
                todo.append((req.name, frozenset(req.extras)))
    return found


def main(argv: list[str]) -> int:
    pins = closure("prunesearch", argv)
    print("# the exact versions the suite last passed with: pip install -e \".[dev]\" -c constraints.txt")
    print(f"# made by: python .ci/freeze.py {' '.join(argv)}  (Python {sys.version.split()[0]})")
    for name, version in sorted(pins.items()):
        print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
