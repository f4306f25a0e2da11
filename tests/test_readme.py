"""Every Python snippet in the README runs as written (so none can rot)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_snippets():
    assert len(SNIPPETS) >= 2


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_readme_snippet_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # snippets that write runs/ write them here
    monkeypatch.setenv("PRUNESEARCH_CACHE", str(tmp_path / "cache"))
    exec(compile(SNIPPETS[index], f"README.md snippet {index}", "exec"), {"__name__": "readme"})


ROOT = README.parent


def test_the_readme_installs_as_ci_does_with_the_tested_versions():
    # the README's install line is the one .ci/run uses, and it pins what the suite last passed with
    readme_install = re.search(r"^pip install (.*?)\s+#", README.read_text(), flags=re.M).group(1)
    ci = (ROOT / ".ci" / "run").read_text()
    assert f"python -m pip install {readme_install}\n" in ci
    assert "-c constraints.txt" in readme_install


def test_the_constraints_pin_every_dependency_within_the_lower_bounds():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    pyproject = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", pyproject, flags=re.S | re.M).group(1)
    dev = re.search(r'^dev = \[(.*)\]$', pyproject, flags=re.M).group(1)
    for text in re.findall(r'"([^"]+)"', block + dev):
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside pyproject's {req.specifier}"
