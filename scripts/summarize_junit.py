"""One closing line per half of `scripts/test`, and the exit code for the whole run.

Each argument is `NAME=REPORT:RC`: the half's name, its pytest JUnit XML report and its
pytest exit code. A half fails when pytest exited non-zero (exit 5, "no tests ran",
included) or its report is missing; the last line adds both halves up.
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
        report, _, rc_text = rest.rpartition(":")
        rc = int(rc_text)
        try:
            passed, failed, skipped = counts(Path(report))
        except (OSError, ET.ParseError):
            passed, failed, skipped = 0, 1, 0  # pytest never wrote its report
        if rc != 0 and failed == 0:
            failed = 1  # no test failed, yet pytest did (exit 5: no tests ran; a usage error)
        verdict = "" if rc == 0 else f"  (pytest exit {rc})"
        print(f"{name}: {passed} passed, {failed} failed, {skipped} skipped{verdict}")
        total = [total[0] + passed, total[1] + failed, total[2] + skipped]
        worst = worst or rc
    print(f"total: {total[0]} passed, {total[1]} failed, {total[2]} skipped")
    return 1 if worst else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
