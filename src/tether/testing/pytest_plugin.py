"""tether's pytest plugin (the `pytest11` entry point `tether`): the `tether_crash` fixture.

It registers one fixture and no hooks, and imports `tether.testing` only when a test asks
for the fixture, so a run that does not use it is neither slowed down nor changed.

```python
def test_checkout_survives_crashes(tether_crash) -> None:
    report = tether_crash(checkout, "order-1", waits={"approve": True})
    assert report.result == "paid"
```
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


@pytest.fixture
def tether_crash() -> Callable[..., Any]:
    """`tether.testing.crash_test`: call it with a flow and its arguments; it raises
    `CrashTestFailed` (failing the test) when a kill and resume changes the outcome, and
    returns the `CrashReport` otherwise."""
    from tether.testing import crash_test

    return crash_test
