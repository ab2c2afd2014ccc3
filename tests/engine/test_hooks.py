"""The hooks: one supported vLLM release, and every patched internal named where it is patched."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from vllm_hogwild import hooks
from vllm_hogwild import envs


def test_the_supported_vllm_releases_and_patch_releases_pass():
    hooks.check_vllm_version("0.32.0")
    hooks.check_vllm_version("0.32.3+cpu")
    hooks.check_vllm_version("0.34.0+cpu")


@pytest.mark.parametrize("version", ["0.31.2", "0.33.0", "1.32.0"])
def test_another_vllm_release_is_refused_naming_both(version, monkeypatch):
    monkeypatch.delenv(envs.ANY_VLLM.name, raising=False)
    with pytest.raises(RuntimeError, match=rf"supports vLLM 0\.32\.x, 0\.34\.x .*vLLM {re.escape(version)} is "
                                           rf"installed.*{envs.ANY_VLLM.name}=1"):
        hooks.check_vllm_version(version)


def test_the_override_lets_another_release_through(monkeypatch):
    monkeypatch.setenv(envs.ANY_VLLM.name, "1")
    hooks.check_vllm_version("0.33.0")  # a warning, no error


def _patched(doc: str) -> list[tuple[str, str]]:
    parts = doc.split("\n\n")
    head = parts[1] if len(parts) > 1 else ""
    return re.findall(r"``(\w+)\.(\w+)``", head) if head.startswith("Patches ``") else []


def test_every_hook_module_lists_what_it_patches():
    """Each seam (and each release's adapter of one) opens its docstring with ``Patches
    ``Class.method``...``, naming at least what it wraps, and only what some supported release's
    list holds (``test_releases`` checks those lists against each release's source)."""
    from vllm_hogwild import releases

    known = {(t.cls, t.method) for r in releases.RELEASES for t in releases.targets(r)}
    patching = 0
    for path in sorted(Path(hooks.__file__).parent.glob("*.py")):
        source = path.read_text()
        documented = set(_patched(ast.get_docstring(ast.parse(source)) or ""))
        patching += bool(documented)
        assert releases.wrapped(source) <= documented, path.name
        assert documented <= known, path.name
    assert patching >= 10
