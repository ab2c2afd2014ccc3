"""Command line: ``vllm serve MODEL --plugin hogwild``.

Patches ``EngineArgs.add_cli_args``.
"""

from __future__ import annotations

import argparse
import os


def _enabled_plugin(name: str) -> str:
    """``--plugin NAME``: a general plugin that is installed and enabled here."""
    from importlib.metadata import entry_points

    installed = {ep.name for ep in entry_points(group="vllm.general_plugins")}
    allowed = os.environ.get("VLLM_PLUGINS")
    enabled = installed if allowed is None else installed & set(allowed.split(","))
    if name not in enabled:
        raise argparse.ArgumentTypeError(
            f"plugin {name!r} is not an enabled vLLM plugin; enabled: {', '.join(sorted(enabled)) or 'none'}")
    return name


def install() -> None:
    """Accept ``vllm serve MODEL --plugin hogwild``. vLLM loads plugins from entry points
    (before it builds its parser), so the option only checks that each named plugin is
    installed and enabled."""
    from vllm.engine.arg_utils import EngineArgs

    original = EngineArgs.add_cli_args

    def add_cli_args(parser, *args, **kwargs):
        parser = original(parser, *args, **kwargs)
        if not any("--plugin" in action.option_strings for action in parser._actions):
            parser.add_argument("--plugin", action="append", type=_enabled_plugin, metavar="NAME",
                                help="a vLLM general plugin that must be enabled (e.g. hogwild)")
        return parser

    EngineArgs.add_cli_args = staticmethod(add_cli_args)
