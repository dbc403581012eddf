"""D2 benchmarks: guard overhead, scaling with policy size, the cost of guardrails
(input rules, sequence rules, output sanitizing), compile time and memory, cold
start (against the earlier d2-sdk 1.2.2 release), the rollout features (budgets,
decision log, audit mode, the Redis store), and the cost of telemetry.

    make bench                                   # full run, writes benchmarks/results.md
    uv run --frozen --all-packages python benchmarks/run.py --quick   # smoke run

Every per-call figure is the median, over interleaved batches, of the time per call
of a batch; each guarded figure is set against a bare call measured in the same run.
``--quick`` uses fewer and shorter batches, never installs the 1.2.2 baseline and
writes a results file only when ``--output`` is given.

The sections live next to this script, one module each (``overhead``,
``guardrails``, ``compile_bench``, ``cold`` with ``baseline``, ``rollout_bench``,
``telemetry_bench``),
on top of ``common``;
this script puts the repository root on ``sys.path`` and imports them as
``benchmarks.<name>`` (the names mypy gives them).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

# The sections are modules next to this file (no __init__.py): import them as
# ``benchmarks.<name>`` from the repository root, however this script is started.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.baseline import BASELINE_VERSION
from benchmarks.cold import cold_section
from benchmarks.common import ROOT, Settings, Table, Target, verdict
from benchmarks.compile_bench import compile_section
from benchmarks.guardrails import guardrails_section
from benchmarks.overhead import overhead_section
from benchmarks.rollout_bench import rollout_section
from benchmarks.telemetry_bench import telemetry_section

RESULTS = ROOT / "benchmarks" / "results.md"

Section = Callable[[Settings], tuple[list[Table], list[Target]]]


def machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), ""
            )
    except OSError:
        pass
    cpu = f"{os.cpu_count()} CPUs" + (f" ({model})" if model else "")
    return (
        f"{cpu}, {platform.system()} {platform.machine()}, "
        f"{platform.python_implementation()} {platform.python_version()}"
    )


@contextmanager
def silent_d2() -> Iterator[None]:
    old = os.environ.get("D2_SILENT")
    os.environ["D2_SILENT"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("D2_SILENT", None)
        else:
            os.environ["D2_SILENT"] = old


SECTIONS: dict[str, Section] = {
    "overhead": overhead_section,
    "guardrails": guardrails_section,
    "compile": compile_section,
    "cold": cold_section,
    "rollout": rollout_section,
    # Last: it imports the OpenTelemetry SDK, which would let the sections that
    # configure instances in-process pick up metrics if they ran after it.
    "telemetry": telemetry_section,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few short batches")
    parser.add_argument(
        "--only", action="append", choices=sorted(SECTIONS), help="run only this section"
    )
    parser.add_argument(
        "--no-baseline", action="store_true", help=f"skip d2-sdk {BASELINE_VERSION}"
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="markdown results file (default: benchmarks/results.md; --quick: none)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    settings = Settings.make(args.quick, baseline=not args.no_baseline)
    output: Path | None = args.output or (None if args.quick else RESULTS)

    started = time.perf_counter()
    tables: list[Table] = []
    targets: list[Target] = []
    with silent_d2():
        for name, section in SECTIONS.items():
            if args.only and name not in args.only:
                continue
            section_tables, section_targets = section(settings)
            tables += section_tables
            targets += section_targets

    summary = Table("Targets", ["target", "measured", "limit", "result"], align="lrrl")
    for target in targets:
        summary.add(target.name, target.measured, target.limit, verdict(target.ok))
    tables.insert(0, summary)
    elapsed = time.perf_counter() - started
    header = [
        f"Machine: {machine()}",
        f"Mode: {'quick (smoke, noisy)' if settings.quick else 'full'}; "
        f"{settings.batches} batches of ~{settings.batch_ns / 1e6:g} ms per per-call figure; "
        f"run took {elapsed:.0f} s",
    ]

    print("\n".join(header))
    for table in tables:
        print()
        print(table.text())
    if output is not None:
        md = [
            "# D2 benchmark results",
            "",
            "Generated by `make bench` (`benchmarks/run.py`); overwritten on each run. "
            "See docs/performance.md.",
            "",
            *[f"- {h}" for h in header],
            f"- Date (UTC): {time.strftime('%Y-%m-%d', time.gmtime())}",
        ]
        for table in tables:
            md += ["", table.markdown()]
        output.write_text("\n".join(md) + "\n")
        print(f"\nwrote {output}")
    missed = [target for target in targets if target.ok is False]
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
