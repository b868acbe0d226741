"""`GET /metrics` in the Prometheus text format: what an autoscaler (KEDA) or an alert needs."""

from __future__ import annotations

import time

from ..store import ExecutionStats


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(stats: ExecutionStats, now: float | None = None) -> str:
    now = time.time() if now is None else now
    lines = [
        "# HELP tether_executions Executions in the store, by status and queue.",
        "# TYPE tether_executions gauge",
    ]
    for (status, queue), count in sorted(stats.counts.items()):
        lines.append(
            f'tether_executions{{status="{_label(status)}",queue="{_label(queue)}"}} {count}'
        )
    age = 0.0 if stats.queued_since is None else max(0.0, now - stats.queued_since)
    lines += [
        "# HELP tether_oldest_queued_age_seconds How long the longest-queued execution has waited "
        "for a worker (0: none queued).",
        "# TYPE tether_oldest_queued_age_seconds gauge",
        f"tether_oldest_queued_age_seconds {age:.3f}",
        "# HELP tether_waits_pending Waits for input that have none yet.",
        "# TYPE tether_waits_pending gauge",
        f"tether_waits_pending {stats.pending_waits}",
    ]
    return "\n".join(lines) + "\n"
