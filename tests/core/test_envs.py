"""Every environment variable in one place (``vllm_hogwild/envs.py``): each parses or names
itself in the error, the README's table lists exactly them, and no other module reads one."""

from __future__ import annotations

import ast
import os
import re

import pytest

from vllm_hogwild import envs

from tests.helpers import ROOT


def test_values_defaults_and_errors(monkeypatch):
    for variable in envs.VARIABLES:
        monkeypatch.delenv(variable.name, raising=False)
    assert envs.get(envs.CPU_OP) == "native" and envs.get(envs.CPU_PACKED_GIB) is None
    assert envs.get(envs.GROUP_ASSEMBLY_SECONDS) == 60.0 and envs.get(envs.ANY_VLLM) is False
    monkeypatch.setenv(envs.CPU_ISA.name, "x86-64-v3")
    assert envs.get(envs.CPU_ISA) == "x86-64-v3"
    monkeypatch.setenv(envs.ENGINE_TIMEOUT_SECONDS.name, "0.5")
    assert envs.get(envs.ENGINE_TIMEOUT_SECONDS) == 0.5
    monkeypatch.setenv(envs.CPU_OP.name, "fast")
    with pytest.raises(ValueError, match="VLLM_HOGWILD_CPU_OP='fast': expected one of native, torch"):
        envs.get(envs.CPU_OP)
    monkeypatch.setenv(envs.GROUP_ASSEMBLY_SECONDS.name, "-3")
    with pytest.raises(ValueError, match="VLLM_HOGWILD_GROUP_ASSEMBLY_SECONDS='-3': expected seconds"):
        envs.get(envs.GROUP_ASSEMBLY_SECONDS)


def test_the_readme_lists_exactly_these():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        listed = set(re.findall(r"^\| `(VLLM_HOGWILD_[A-Z_]+)` \|", f.read(), re.M))
    assert listed == {v.name for v in envs.VARIABLES}


def _docstrings(tree: ast.AST) -> set[int]:
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    return {id(n.body[0].value) for n in nodes if n.body and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)}


def test_no_other_module_names_them():
    """A ``VLLM_HOGWILD_`` name in the code (not a docstring) of any module of the package or
    the kernels but ``envs``: a second place that reads or spells a variable."""
    found = []
    for package in ("vllm_hogwild", "kernels"):
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in sorted(files):
                path = os.path.join(folder, name)
                if not name.endswith(".py") or path == os.path.join(ROOT, "vllm_hogwild", "envs.py"):
                    continue
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read())
                skip = _docstrings(tree)
                found += [f"{path}:{n.lineno}: {n.value}" for n in ast.walk(tree)
                          if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip
                          and "VLLM_HOGWILD_" in n.value]
    assert not found, found
