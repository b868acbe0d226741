"""One closing line per run of `scripts/test`, and the exit code for the whole of it.

Each argument is `NAME=REPORT:RC[,REPORT:RC...]`: the run's name, then each pytest JUnit XML
report and pytest exit code it is made of (the floor run is two pytest runs, one line). A run
fails when a pytest exited non-zero (exit 5, "no tests ran", included) or a report is missing;
the last line adds all runs up.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def counts(report: Path) -> tuple[int, int, int]:
    """(passed, failed, skipped) from a JUnit XML report; errors count as failures."""
    root = ET.parse(report).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    tests = failed = skipped = 0
    for suite in suites:
        tests += int(suite.get("tests", 0))
        failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped += int(suite.get("skipped", 0))
    return tests - failed - skipped, failed, skipped


def main(args: list[str]) -> int:
    total = [0, 0, 0]
    worst = 0
    for arg in args:
        name, _, rest = arg.partition("=")
        line = [0, 0, 0]
        codes = []
        for part in rest.split(","):
            report, _, rc_text = part.rpartition(":")
            rc = int(rc_text)
            try:
                passed, failed, skipped = counts(Path(report))
            except (OSError, ET.ParseError):
                passed, failed, skipped = 0, 1, 0  # pytest never wrote its report
            if rc != 0 and failed == 0:
                failed = 1  # no test failed, yet pytest did (exit 5: no tests ran; a usage error)
            line = [line[0] + passed, line[1] + failed, line[2] + skipped]
            codes.append(rc)
        failing = [str(rc) for rc in codes if rc != 0]
        verdict = f"  (pytest exit {', '.join(failing)})" if failing else ""
        print(f"{name}: {line[0]} passed, {line[1]} failed, {line[2]} skipped{verdict}")
        total = [t + n for t, n in zip(total, line, strict=True)]
        worst = worst or next((rc for rc in codes if rc != 0), 0)
    print(f"total: {total[0]} passed, {total[1]} failed, {total[2]} skipped")
    return 1 if worst or total[1] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
