"""The report sub-commands: ``tprune compare``, ``merge``, ``table`` and ``matrix``.

Each parses its arguments, calls :mod:`pytest_tprune.reports`, and turns a
:class:`~pytest_tprune.reports.schema.ReportError` into one line and exit
status 2. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_tprune.cli.base import Parser, emit, fail, parse_or_status
from pytest_tprune.errors import EXIT_FAILED, EXIT_OK
from pytest_tprune.reports.compare import (
    DEFAULT_DURATION_FACTOR,
    DEFAULT_SPEEDUP_DROP,
    FORMATS,
    MIN_DURATION_DELTA,
    compare_reports,
)
from pytest_tprune.reports.fallbacks import DEFAULT_KEPT_TOLERANCE
from pytest_tprune.reports.schema import ReportError, load_report


def compare_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="tprune compare",
        description="Compare two pytest-tprune JSON run reports (exit 1 when a case newly fails, prunes less "
        "- more groups left whole or skipped, a kept fraction grown past --kept-tolerance, a worse stock "
        "torch-pruning verdict - or disappeared, or a report is incomplete; 2 for bad input).",
    )
    parser.add_argument("old", metavar="OLD.json", help="the baseline report (e.g. the pinned library versions)")
    parser.add_argument("new", metavar="NEW.json", help="the report to check (e.g. the upgraded libraries)")
    parser.add_argument("--format", choices=FORMATS, default="text", help="text (default), markdown or json")
    parser.add_argument(
        "--duration-threshold",
        type=float,
        default=DEFAULT_DURATION_FACTOR,
        metavar="FACTOR",
        help=f"report cases this many times slower or faster, by at least {MIN_DURATION_DELTA:g} s "
        f"(default {DEFAULT_DURATION_FACTOR:g})",
    )
    parser.add_argument(
        "--kept-tolerance",
        type=float,
        default=DEFAULT_KEPT_TOLERANCE,
        metavar="FRACTION",
        help="how much a case's kept fraction of params or MACs may grow before it is a regression: absolute, "
        f"in [0, 1) (default {DEFAULT_KEPT_TOLERANCE:g}, i.e. one percentage point); a smaller one never is",
    )
    parser.add_argument(
        "--speedup-drop",
        type=float,
        default=DEFAULT_SPEEDUP_DROP,
        metavar="FRACTION",
        help="show cases whose measured speed-up (unpruned / pruned latency) fell by more than this, relative, "
        f"in (0, 1) (default {DEFAULT_SPEEDUP_DROP:g}); shown apart, never a regression",
    )
    return parser


def compare_main(argv: Sequence[str]) -> int:
    """``tprune compare OLD NEW [--format F] [--duration-threshold X] [--kept-tolerance T] [--speedup-drop D]``.

    A speed-up drop (``--speedup-drop``) is shown apart and never changes the exit status.

    0 no regression; 1 regressed or a report is incomplete (the comparison is
    still printed, with a line naming the incomplete report); 2 bad input.
    """
    from pytest_tprune.reports.render import RENDERERS

    args = parse_or_status(compare_parser(), argv)
    if isinstance(args, int):
        return args
    if not args.duration_threshold > 1 or math.isinf(args.duration_threshold):
        return fail("tprune compare", f"--duration-threshold must be a factor above 1, got {args.duration_threshold:g}")
    if not 0 <= args.kept_tolerance < 1:
        return fail(
            "tprune compare",
            f"--kept-tolerance must be a fraction in [0, 1), e.g. 0.01 for one percentage point, "
            f"got {args.kept_tolerance:g}",
        )
    if not 0 < args.speedup_drop < 1:
        return fail(
            "tprune compare", f"--speedup-drop must be a fraction in (0, 1), e.g. 0.25, got {args.speedup_drop:g}"
        )
    try:
        old, new = load_report(args.old), load_report(args.new)
        comparison = compare_reports(old, new, args.duration_threshold, args.kept_tolerance, args.speedup_drop)
    except ReportError as err:
        return fail("tprune compare", str(err))
    emit(RENDERERS[args.format](comparison))
    return comparison.exit_status


def merge_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="tprune merge", description="Merge the JSON reports of the shards of one run.")
    parser.add_argument("out", metavar="OUT.json", help="the merged report to write")
    parser.add_argument("inputs", nargs="+", metavar="IN.json", help="shard reports (--tprune-shard K/N) of one run")
    return parser


def merge_main(argv: Sequence[str]) -> int:
    """``tprune merge OUT.json IN.json...``: 0 written, 2 bad or inconsistent input."""
    from pytest_tprune.reports.atomic import write_json_atomic
    from pytest_tprune.reports.merge import merge_reports

    args = parse_or_status(merge_parser(), argv)
    if isinstance(args, int):
        return args
    try:
        reports = [load_report(path) for path in args.inputs]
        document, warning = merge_reports(reports)
    except ReportError as err:
        return fail("tprune merge", str(err))
    try:
        write_json_atomic(Path(args.out), document)
    except OSError as err:
        return fail("tprune merge", f"cannot write {args.out}: {err.strerror or err}")
    for line in filter(None, (warning, incomplete_warning(document))):
        print(f"tprune merge: warning: {line}", file=sys.stderr)
    emit(f"tprune merge: {len(reports)} report(s), {len(document['cases'])} case(s) -> {args.out}\n")
    return EXIT_OK


def incomplete_warning(document: Mapping[str, Any]) -> str | None:
    """A line for a merged document of which some input was incomplete, else None."""
    if document.get("complete", True) is not False:
        return None
    return f"incomplete run ({document.get('incomplete_reason')}): only the cases that finished are in it"


def table_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="tprune table",
        description="Render pytest-tprune JSON run reports (e.g. the shards of a zoo run) "
        "as a markdown prunability table by timm family.",
    )
    parser.add_argument("reports", nargs="+", metavar="REPORT.json", help="reports of one run (shards are merged)")
    parser.add_argument("--title", default="Prunability by timm family", help="the page's heading")
    parser.add_argument("--out", type=Path, help="write the page here (atomically) instead of to stdout")
    return parser


def table_main(argv: Sequence[str], families: Mapping[str, str] | None = None) -> int:
    """``tprune table REPORT.json... [--title T] [--out F]``: 0 rendered, 2 bad input or an unwritable page."""
    from pytest_tprune.reports.atomic import write_text_atomic
    from pytest_tprune.reports.merge import merge_reports
    from pytest_tprune.reports.table import render, written_date

    args = parse_or_status(table_parser(), argv)
    if isinstance(args, int):
        return args
    try:
        document, warning = merge_reports([load_report(path) for path in args.reports])
    except ReportError as err:
        return fail("tprune table", str(err))
    if families is None:
        from pytest_tprune.engine.zoo import family_of

        families = family_of(c["model"] for c in document["cases"])
    text = render(document, families, args.title, written_date(document, args.reports), partial=warning)
    for line in filter(None, (warning, incomplete_warning(document))):
        print(f"tprune table: warning: {line}", file=sys.stderr)
    if args.out is None:
        emit(text)
        return EXIT_OK
    try:
        write_text_atomic(args.out, text)
    except OSError as err:
        return fail("tprune table", f"cannot write {args.out}: {err.strerror or err}")
    emit(f"tprune table: {len(document['cases'])} case(s) -> {args.out}\n")
    return EXIT_OK


def matrix_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="tprune matrix",
        description="Render pytest-tprune JSON run reports of one selection under different library versions "
        "as a markdown compatibility matrix: a column per report, a row per timm family (exit 1 when a report "
        "is incomplete, the matrix still rendered; 2 for bad input).",
    )
    parser.add_argument("reports", nargs="+", metavar="REPORT.json", help="one run report per library set")
    parser.add_argument("--output", "--out", metavar="PATH", help="write the page here (atomically) instead of stdout")
    parser.add_argument("--title", metavar="TEXT", help="the page's heading (default: Compatibility matrix)")
    return parser


def matrix_main(argv: Sequence[str], families: Mapping[str, str] | None = None) -> int:
    """``tprune matrix REPORT.json... [--output F] [--title T]``.

    0 rendered; 1 rendered, but a report is incomplete (a line on stderr names
    it: its column lacks the cases that did not finish); 2 bad input or an
    unwritable page, which is then left as it was.
    """
    from pytest_tprune.reports.atomic import write_text_atomic
    from pytest_tprune.reports.matrix import incomplete_warnings, models, render_matrix

    args = parse_or_status(matrix_parser(), argv)
    if isinstance(args, int):
        return args
    try:
        reports = [load_report(path) for path in args.reports]
        if families is None:
            from pytest_tprune.engine.zoo import family_of

            families = family_of(models(reports))
        text = render_matrix(reports, families, args.title, args.output)
    except ReportError as err:
        return fail("tprune matrix", str(err))
    if args.output is not None:
        try:
            write_text_atomic(Path(args.output), text)
        except OSError as err:
            return fail("tprune matrix", f"cannot write {args.output}: {err.strerror or err}; choose another --output")
    warnings = incomplete_warnings(reports)
    for line in warnings:
        print(f"tprune matrix: warning: {line}", file=sys.stderr)
    emit(text if args.output is None else f"tprune matrix: {len(reports)} report(s) -> {args.output}\n")
    return EXIT_FAILED if warnings else EXIT_OK
