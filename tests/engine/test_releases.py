"""The list of vLLM internals each supported release is patched at (``vllm_hogwild.releases``) is complete and
matches the installed vLLM's source: a release that moves or re-signs one of them fails here, by name, rather
than inside an engine step."""

import ast
from pathlib import Path

import pytest
import vllm

from tests.helpers import ROOT
from vllm_hogwild import releases
from vllm_hogwild.releases import Target

PACKAGE = Path(ROOT) / "vllm_hogwild"


def _site_root() -> str:
    return str(Path(vllm.__file__).resolve().parents[1])


def test_the_installed_release_is_supported_and_every_target_matches_its_source():
    release = releases.release_of(vllm.__version__)
    assert release is not None, f"vLLM {vllm.__version__} is not in releases.RELEASES"
    assert releases.check(_site_root(), releases.targets(release)) == []


def _wrapped(release: str) -> set[tuple[str, str]]:
    """(class, method) of every ``wrap(Class, "method", ...)`` in the hooks that run on ``release``:
    the seams shared by all releases and that release's adapters."""
    adapters = {m for r in releases.RELEASES for m in releases.adapters(r).values()}
    mine = set(releases.adapters(release).values())
    found = set()
    for path in (PACKAGE / "hooks").glob("*.py"):
        module = f"vllm_hogwild.hooks.{path.stem}"
        if module in adapters and module not in mine:
            continue
        found |= releases.wrapped(path.read_text())
    return found


def _overridden() -> set[tuple[str, str]]:
    """(vLLM base, method) of every builder and impl method the backends override (``build``, ``forward``:
    the impls take ``forward`` from ``attention.HogwildForward``)."""
    found = set()
    for name in ("cpu_backend.py", "cuda_backend.py"):
        for node in ast.parse((PACKAGE / name).read_text()).body:
            if not isinstance(node, ast.ClassDef):
                continue
            bases = [b.id for b in node.bases if isinstance(b, ast.Name)]
            own = {f.name for f in node.body if isinstance(f, ast.FunctionDef)}
            if "HogwildForward" in bases:
                own.add("forward")
            for base in bases:
                if base.endswith(("MetadataBuilder", "Impl")):
                    found |= {(base, m) for m in own & {"build", "forward", "__init__"}}
    return found


@pytest.mark.parametrize("release", sorted(releases.RELEASES))
def test_every_wrapped_or_overridden_method_is_listed(release):
    listed = {(t.cls, t.method) for t in releases.targets(release)}
    assert _wrapped(release) and _overridden()
    assert _wrapped(release) - listed == set()
    assert _overridden() - listed == set()


def test_check_names_what_moved(tmp_path):
    pkg = tmp_path / "vllm" / "core"
    pkg.mkdir(parents=True)
    (tmp_path / "vllm" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "sched.py").write_text(
        "class Scheduler:\n"
        "    def schedule(self, throttle, *, extra=None): ...\n"
        "    @staticmethod\n"
        "    def make(parser): ...\n")
    want = [Target("s", "vllm.core.sched", "Scheduler", "schedule", ("throttle", "*extra")),
            Target("s", "vllm.core.sched", "Scheduler", "make", ("parser",))]
    assert releases.check(str(tmp_path), want) == []
    changed = [Target("s", "vllm.core.sched", "Scheduler", "schedule", ("throttle",))]
    assert "parameters ('throttle', '*extra')" in releases.check(str(tmp_path), changed)[0]
    assert "is not defined" in releases.check(
        str(tmp_path), [Target("s", "vllm.core.sched", "Scheduler", "gone", ())])[0]
    assert "class Runner" in releases.check(
        str(tmp_path), [Target("s", "vllm.core.sched", "Runner", "step", ())])[0]
    assert "module vllm.core.runner is gone" in releases.check(
        str(tmp_path), [Target("s", "vllm.core.runner", "Runner", "step", ())])[0]


def test_release_of():
    assert releases.release_of("0.32.0+cpu") == "0.32"
    assert releases.release_of("0.32.3") == "0.32"
    assert releases.release_of("0.31.2") is None


def _source_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("vllm_cpu_source", PACKAGE.parent / "scripts" / "vllm_cpu_source.py")
    source = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(source)
    return source


def test_a_source_patch_applies_once(tmp_path):
    """scripts/vllm_cpu_source.py's edits of vLLM's source: run twice, each applies once: an insertion
    (the new text keeps the old), a substitution whose new text is a prefix of the old, a removal."""
    source = _source_script()
    path = tmp_path / "f.txt"
    path.write_text("a\nreturn not HAS_TRITON and x86\nb\nremove me\n")
    for _ in range(2):
        source.replace(path, "b\n", "inserted\nb\n")
        source.replace(path, "return not HAS_TRITON and x86", "return not HAS_TRITON")
        source.replace(path, "remove me\n", "")
    assert path.read_text() == "a\nreturn not HAS_TRITON\ninserted\nb\n"
    with pytest.raises(SystemExit, match="needs its own patch"):
        source.replace(path, "not there", "x")


@pytest.mark.parametrize("flags, variant", [
    ({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}, "amx"),  # Sapphire Rapids
    ({"avx2", "avx512f", "avx512_bf16"}, "amx"),  # Cooper Lake, Zen 4: upstream's loader takes _C there too
    ({"avx2", "avx512f", "avx512_vnni"}, "avx512"),  # Skylake-SP to Ice Lake: the AMX _C dies of SIGILL there
    ({"avx2", "fma"}, "avx2"),  # Zen 2/3
])
def test_the_vllm_build_follows_the_cpu_as_upstreams_loader_does(flags, variant):
    assert _source_script().isa_variant(flags) == variant
