"""CLI start-up: `stacktools --help`, every `stacktools CMD --help` and formula-mode
`size`, against `python -c "import numpy"`.

Run: python -m benchmarks.bench_startup [--repeat 15]

Every round runs each case once as a fresh process, in a rotated order; a case's
ratio is the median over rounds of (its time / that round's `import numpy`).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from benchmarks.common import Results, stacktools_command

BASELINE = "python -c 'import numpy'"


def _cases() -> list[tuple[str, list[str]]]:
    from stacktools.cli.app import COMMANDS

    cli = stacktools_command()
    cases = [(BASELINE, [sys.executable, "-c", "import numpy"]),
             ("python -c 'pass'", [sys.executable, "-c", "pass"]),
             ("stacktools --help", cli + ["--help"]),
             ("stacktools size --box 256 --count 1000000", cli + ["size", "--box", "256", "--count", "1000000"])]
    cases += [(f"stacktools {name} --help", cli + [name, "--help"]) for name in COMMANDS]
    cases += [(f"stacktools cache {sub} --help", cli + ["cache", sub, "--help"]) for sub in ("sync", "plan")]
    return cases


def _run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    cases = _cases()
    for _, cmd in cases:  # warm the file cache
        _run(cmd)
    times: dict[str, list[float]] = {name: [] for name, _ in cases}
    for r in range(args.repeat):
        order = cases[r % len(cases):] + cases[:r % len(cases)]
        for name, cmd in order:
            times[name].append(_run(cmd))
    results = Results("bench_startup", {"repeat": args.repeat})
    print(f"\nCLI start-up: median of {args.repeat} rounds, ratio paired per round with {BASELINE}\n")
    print(f"| what | median time | ratio to {BASELINE} |")
    print("| --- | --- | --- |")
    base = times[BASELINE]
    for name, _ in cases:
        ratio = statistics.median(t / b for t, b in zip(times[name], base))
        med = statistics.median(times[name])
        print(f"| {name} | {med * 1000:.1f} ms | {ratio:.2f}× |")
        results.add(name, med, BASELINE, statistics.median(base), ratio=ratio)
    results.report()


if __name__ == "__main__":
    main()
