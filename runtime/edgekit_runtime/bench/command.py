"""`edgekit-run bench`: the command behind the CLI's subcommand (cli/main.py holds only its parser entry)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from ..errors import BundleError
from ..model import load
from .context import Context
from .report import (check_result, compare, compare_markdown, is_result_file, read_result, to_markdown,
                     write_json)
from .runner import run_suite
from .suite import GENERATION_KINDS, load_suite

PROG = "edgekit-run bench"


def add_arguments(p: argparse.ArgumentParser, positive_int: Callable[[str], int], backends: tuple[str, ...]) -> None:
    p.add_argument("bundle", metavar="BUNDLE", nargs="?", default=None,
                   help="bundle directory or .tar (not with --compare)")
    p.add_argument("--suite", metavar="FILE", help="suite file (TOML), e.g. benchmarks/suites/standard.toml")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"),
                   help="A/B table of two result files (--json output of earlier runs), or of two bundles: then "
                        "the suite runs on both, repeats interleaved (A B, B A, ...)")
    p.add_argument("--repeats", type=positive_int, default=None, metavar="N",
                   help="run every run N times; values are the medians, the per-repeat values decide 'beyond "
                        "noise' (default 1; 3 with --compare of two bundles)")
    p.add_argument("--json", metavar="OUT", help="write the result (or comparison) as JSON to OUT ('-': stdout)")
    p.add_argument("--markdown", metavar="OUT", help="write the Markdown report to OUT (it is also printed, unless "
                                                     "--json -)")
    p.add_argument("--data", metavar="FILE", help="use FILE as the data file of every run that reads one (e.g. "
                                                  "your held-back test split as .csv/.jsonl)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="onnxruntime intra-op threads (default: the suite's threads, else onnxruntime's choice)")
    p.add_argument("--backend", choices=backends, default=None,
                   help="force one of the profile's backends (default: the suite's, else the first that works)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _output(args: argparse.Namespace, doc: dict[str, Any], markdown: str) -> None:
    if args.json == "-":
        print(json.dumps(doc, indent=1, allow_nan=False))
    else:
        if args.json:
            write_json(doc, args.json)
        print(markdown, end="")
    if args.markdown:
        Path(args.markdown).write_text(markdown, encoding="utf-8")


def run(args: argparse.Namespace, usage_error: type[Exception]) -> int:
    """The command; returns 0, or 1 if a run failed (its error is in the result, the rest ran)."""
    def progress(line: str) -> None:
        if not args.quiet:
            print(f"{PROG}: {line}", file=sys.stderr, flush=True)

    command = ["edgekit-run", *sys.argv[1:]] if Path(sys.argv[0]).name.startswith("edgekit-run") else list(sys.argv)
    overrides = {"data": args.data, "threads": args.threads, "backend": args.backend}

    def contexts(paths: list[str], suite) -> list[Context]:
        out = []
        for label, path in zip("AB" if len(paths) == 2 else [Path(paths[0]).name], paths):
            progress(f"loading {path}" + (f" as {label}" if len(paths) == 2 else ""))
            model = load(path, threads=suite.threads, backend=suite.backend)
            generative = model.task.name == "causal-lm"
            wrong = [r.name for r in suite.runs if (r.kind in GENERATION_KINDS) != generative]
            if wrong:
                model.close()
                if generative:
                    raise BundleError(f"{path}: a causal-lm bundle, but runs {wrong} of the suite time and score "
                                      f"text classifiers (predict). Fix: use a suite of kind = \"generation\" runs, "
                                      f"e.g. benchmarks/suites/generation.toml.")
                raise BundleError(f"{path}: a {model.task.name} bundle, but runs {wrong} of the suite are "
                                  f"generation runs, for causal-lm bundles. Fix: leave them out for this bundle.")
            out.append(Context(label, path, model, suite.threads, suite.backend, progress, verbose=args.verbose))
        return out

    if args.compare:
        if args.bundle:
            raise usage_error("give BUNDLE --suite FILE, or --compare A B, not both")
        a, b = args.compare
        files = [is_result_file(a), is_result_file(b)]
        if all(files):
            if args.suite or args.data or args.repeats:
                raise usage_error("--suite, --data and --repeats apply to bundles; two result files are compared as "
                                  "they are")
            doc = compare(read_result(a), read_result(b), a_source=a, b_source=b)
        elif not any(files):
            if not args.suite:
                raise usage_error("comparing two bundles needs --suite FILE (comparing results needs two .json "
                                  "files written by --json)")
            suite = load_suite(args.suite, **overrides)
            ctxs = contexts([a, b], suite)
            results = run_suite(suite, ctxs, repeats=args.repeats or 3, command=command, progress=progress)
            doc = compare(results[0], results[1], a_source=a, b_source=b, same_run=True)
        else:
            raise usage_error(f"{a if files[0] else b} is a result file and {b if files[0] else a} is not: give two "
                              f"result files or two bundles")
        _output(args, doc, compare_markdown(doc))
        failed = [r["name"] for side in ("a", "b") for r in doc["results"][side]["runs"] if r["status"] == "error"]
    else:
        if not args.bundle or not args.suite:
            raise usage_error("give a BUNDLE and --suite FILE (or --compare A B)")
        suite = load_suite(args.suite, **overrides)
        [ctx] = contexts([args.bundle], suite)
        [doc] = run_suite(suite, [ctx], repeats=args.repeats or 1, command=command, progress=progress)
        check_result(doc, "the new result")
        _output(args, doc, to_markdown(doc))
        failed = [r["name"] for r in doc["runs"] if r["status"] == "error"]
    if failed:
        print(f"{PROG}: {len(failed)} run(s) failed: {', '.join(failed)} (their errors are in the result)",
              file=sys.stderr)
        return 1
    return 0
