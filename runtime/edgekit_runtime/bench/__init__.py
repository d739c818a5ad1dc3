"""edgekit-run bench: benchmark suites defined as data, their results, and A/B comparison.

Suites are TOML files (``suite.load_suite``; the repo's are in benchmarks/suites/); a run of one
gives a result document (schema "edgekit-bench" version 1, see ``report`` and
docs/bench-schema.md) that ``report.to_markdown`` renders and ``report.compare`` sets against
another. Like the rest of the runtime: numpy, onnxruntime, tokenizers and the standard library.

Modules: ``suite`` (files and validation), ``data`` (texts, labelled rows, the custom mix),
``env`` (the environment record), ``runner`` (the kinds, repeats, interleaving), ``memprobe``
(the fresh-process load probe), ``report`` (schema checks, Markdown, A/B), ``command`` (the CLI).
Nothing is imported here: each importer takes the modules it needs.
"""
