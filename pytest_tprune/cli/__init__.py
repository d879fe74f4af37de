"""The ``tprune`` command: the seed's command line and the report sub-commands.

``tprune --model NAME ...`` is :mod:`pytest_tprune.cli.prune`; ``tprune
compare``, ``merge``, ``table`` and ``matrix`` are :mod:`pytest_tprune.cli.commands`. Every
command shares :mod:`pytest_tprune.cli.base` and the exit codes of
:mod:`pytest_tprune.errors`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

SUBCOMMANDS = ("compare", "merge", "table", "matrix")


def main(argv: Sequence[str] | None = None) -> int:
    """``tprune``: dispatch to a sub-command, else run the seed's command line."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] and args[0] in SUBCOMMANDS:
        from pytest_tprune.cli import commands

        run = {
            "compare": commands.compare_main,
            "merge": commands.merge_main,
            "table": commands.table_main,
            "matrix": commands.matrix_main,
        }
        return run[args[0]](args[1:])
    from pytest_tprune.cli.prune import main as prune_main

    return prune_main(args)
