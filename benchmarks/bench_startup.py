"""CLI start-up: `stacktools --help` against `python -c "import numpy"`.

Run: python -m benchmarks.bench_startup [--repeat 15]

Both run as fresh processes; the table gives the median wall time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from benchmarks.common import Results, command, median_of, print_table, stacktools_command


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    cli = stacktools_command()
    cases = [
        ("python -c 'import numpy'", [sys.executable, "-c", "import numpy"]),
        ("python -c 'pass'", [sys.executable, "-c", "pass"]),
        ("stacktools --help", cli + ["--help"]),
        ("stacktools size --box 256 --count 1000000", cli + ["size", "--box", "256", "--count", "1000000"]),
        ("stacktools cs --help", cli + ["cs", "--help"]),
        ("stacktools cache --help", cli + ["cache", "--help"]),
    ]
    for _, cmd in cases:  # warm the file cache
        subprocess.run(cmd, capture_output=True)
    rows = [(name, median_of(command(cmd), args.repeat)) for name, cmd in cases]
    results = Results("bench_startup", {"repeat": args.repeat})
    print_table(f"CLI start-up (median of {args.repeat})", rows, "python -c 'import numpy'", results)
    heavy = subprocess.run([sys.executable, "-X", "importtime", "-c",
                                                  "import stacktools.cli.app"],
                           capture_output=True, text=True).stderr
    loaded = {line.split("|")[-1].strip().split(".")[0] for line in heavy.splitlines()[1:]}
    print("\nheavy modules imported by the CLI at start-up:",
          ", ".join(m for m in ("pandas", "starfile", "matplotlib", "sqlite3", "mrcfile", "rich")
                    if m in loaded) or "none")
    results.report()


if __name__ == "__main__":
    main()
