"""The vLLM releases the plugin runs on, and every vLLM internal it patches or subclasses in each.

vLLM offers public seams for some of what the plugin does (a general plugin, an attention backend by
``register_backend``, a logits processor by entry point, an endpoint plugin); the rest is done by wrapping
internals (``hooks/``). Internals move between releases, so each supported release has a module here
(``v0_32``) listing, per seam, the ``Class.method`` it wraps or overrides with the parameters its wrapper was
written against. ``check`` compares such a list with a release's source, read as text (no import), so the
same check runs on the installed vLLM (``tests/engine/test_releases.py``) and on another release's unpacked source
(``scripts/vllm_drift.py``). Pure: no vLLM, no torch.
"""

from __future__ import annotations

import ast
import importlib
import os
from dataclasses import dataclass

# x.y of each release the plugin is tested on -> the module listing its targets.
RELEASES = {"0.32": "vllm_hogwild.releases.v0_32", "0.34": "vllm_hogwild.releases.v0_34"}


@dataclass(frozen=True)
class Target:
    """``module.cls.method`` as a wrapper or subclass expects it: ``params`` are its parameters after
    ``self`` or ``cls`` (all of a static method's) (``*name`` for a var-positional, ``**name`` for var-keyword, keyword-only ones prefixed ``*``
    when there is no var-positional)."""

    seam: str
    module: str
    cls: str
    method: str
    params: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.cls}.{self.method}"


def release_of(version: str) -> str | None:
    """The supported x.y that ``version`` (e.g. ``0.32.0+cpu``) belongs to, or None."""
    xy = ".".join(version.split("+")[0].split(".")[:2])
    return xy if xy in RELEASES else None


def targets(release: str) -> list[Target]:
    return list(importlib.import_module(RELEASES[release]).TARGETS)


def adapters(release: str) -> dict[str, str]:
    """Seam -> the module holding its part for ``release``."""
    return dict(importlib.import_module(RELEASES[release]).ADAPTERS)


def installed() -> str:
    """The supported release installed here (the hooks' guard refuses any other first)."""
    import vllm

    found = release_of(vllm.__version__)
    if found is None:  # only with VLLM_HOGWILD_ANY_VLLM=1: try the newest release's adapters
        found = sorted(RELEASES)[-1]
    return found


def adapter(seam: str) -> str:
    """The module holding ``seam``'s release-specific part for the installed vLLM."""
    return adapters(installed())[seam]


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[str, ...]:
    a = fn.args
    static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in fn.decorator_list)
    names = [x.arg for x in a.posonlyargs + a.args][0 if static else 1:]
    if a.vararg:
        names.append("*" + a.vararg.arg)
    names += [("" if a.vararg else "*") + k.arg for k in a.kwonlyargs]
    if a.kwarg:
        names.append("**" + a.kwarg.arg)
    return tuple(names)


def _module_file(root: str, module: str) -> str | None:
    base = os.path.join(root, *module.split("."))
    for path in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.exists(path):
            return path
    return None


def find(root: str, target: Target) -> tuple[str, ...] | str:
    """The parameters of ``target`` in the source under ``root`` (the folder holding ``vllm/``), or why it
    is not there."""
    path = _module_file(root, target.module)
    if path is None:
        return f"module {target.module} is gone"
    tree = ast.parse(open(path, encoding="utf-8").read())
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == target.cls), None)
    if cls is None:
        return f"class {target.cls} is not in {target.module}"
    fn = next((n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
               and n.name == target.method), None)
    if fn is None:
        return f"{target.name} is not defined in {target.module}"
    return _params(fn)


def check(root: str, release_targets: list[Target]) -> list[str]:
    """One line per target that is missing under ``root`` or whose parameters differ from the expected."""
    problems = []
    for t in release_targets:
        found = find(root, t)
        if isinstance(found, str):
            problems.append(f"[{t.seam}] {t.name}: {found}")
        elif found != t.params:
            problems.append(f"[{t.seam}] {t.name}: parameters {found}, the hook expects {t.params}")
    return problems


def wrapped(source: str) -> set[tuple[str, str]]:
    """(class, method) of every ``wrap(Class, "method", ...)`` in a hook module's source; a class
    imported under another name (``from ... import GPUModelRunner as Runner``) counts by each
    name it is imported from."""
    tree = ast.parse(source)
    names: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                names.setdefault(alias.asname or alias.name, set()).add(alias.name)
    found = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "wrap"
                and isinstance(node.args[0], ast.Name) and isinstance(node.args[1], ast.Constant)):
            for cls in names.get(node.args[0].id, {node.args[0].id}):
                found.add((cls, node.args[1].value))
    return found
