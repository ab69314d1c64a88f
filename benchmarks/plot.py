"""Chart and markdown tables from benchmark JSON.

    .venv/bin/python benchmarks/plot.py benchmarks/results/throughput.json \\
        --png benchmarks/results/throughput.png --markdown benchmarks/results/throughput.md

A throughput JSON gives a bar chart (images/s per backend and size, one panel per
batch size, min-max as error bars) and the markdown table; a pipeline JSON gives its
markdown table (no chart). ``--doc docs/performance.md`` also rewrites that file's generated
table for the JSON, between its ``<!-- bench:throughput ... -->`` / ``<!-- /bench:throughput -->``
markers (``bench:pipeline`` for a pipeline JSON; ``--block`` names another pair). ``--readme``
is the old name of ``--doc``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common, readme, report  # noqa: E402
from engine.core.errors import ColorizerError  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("json", type=Path, help="output of throughput.py --json (or pipeline.py --json)")
    p.add_argument("--png", type=Path, default=None, help="write the chart here (throughput JSON only)")
    p.add_argument("--markdown", type=Path, default=None, help="write the table here (default: print it)")
    p.add_argument("--doc", "--readme", dest="doc", type=Path, default=None,
                   help="also rewrite this file's generated table for the JSON (make bench: docs/performance.md)")
    p.add_argument("--block", default=None,
                   help="the markers' name (default: the JSON's kind, 'throughput' or 'pipeline')")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        data = common.read_json(args.json)
        if data.get("benchmark") == "pipeline":
            if args.png:
                raise common.BenchmarkError("--png: charts are drawn from throughput JSON only")
            table = report.pipeline_markdown(data)
        else:
            table = report.throughput_markdown(data)
            if args.png:
                print(f"wrote {report.plot_throughput(data, args.png)}")
        if args.doc:
            name = args.block or str(data.get("benchmark"))
            print(f"wrote {readme.update(args.doc, name, readme.block(data))} (bench:{name})")
    except ColorizerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table, encoding="utf-8")
        print(f"wrote {args.markdown}")
    elif not args.doc:
        print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
