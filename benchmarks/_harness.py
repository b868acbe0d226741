"""What the benchmark scripts share: child processes, machine info and plain-text tables.

Each benchmark script runs every measurement in a child process, the script re-run with a hidden
``--worker NAME`` flag. The child prints its result as ``MARKER`` + one JSON object per line among
whatever the libraries print (``emit``, ``child_main``); the parent runs it with a timeout and
collects those lines (``spawn`` -> ``Child``). Dependency-free, and never imports tether, so the
parent side runs before the package exists.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

BENCH_DIR = Path(__file__).resolve().parent
SRC_DIR = BENCH_DIR.parent / "src"
MARKER = "@@tether-bench@@ "  # prefixes the child's JSON result lines among any library output


# ==================================================================================================
# Child side
# ==================================================================================================


class Unavailable(Exception):
    """The engine cannot be imported or set up: reported as a row, not as a failure."""


@contextlib.contextmanager
def unavailable_on_error() -> Iterator[None]:
    # Anything raised while importing or configuring an engine (a missing module, an API that the
    # package in development does not have yet) means "unavailable", not "slow" or "broken".
    try:
        yield
    except Exception as exc:
        raise Unavailable(f"{type(exc).__name__}: {exc}") from exc


def emit(data: dict[str, Any]) -> None:
    print(MARKER + json.dumps(data, default=str), flush=True)


def child_main(measure: Callable[[], dict[str, Any]]) -> int:
    """Run one measurement in this child process and emit its result, or why there is none."""
    try:
        emit(measure())
    except Unavailable as exc:
        emit({"unavailable": str(exc)})
    except Exception as exc:
        traceback.print_exc()
        emit({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    return 0


# ==================================================================================================
# Parent side
# ==================================================================================================


@dataclass
class Child:
    data: dict[str, Any]
    returncode: int
    wall_s: float
    stderr: str

    def failure(self, needs: str | None = None) -> str | None:
        """Why this child produced no usable result, or None.

        No usable result: it reported an error, or emitted nothing (or, with ``needs``, no
        ``needs`` key).
        """
        if "error" in self.data:
            return str(self.data["error"])
        if (needs not in self.data) if needs else not self.data:
            tail = self.stderr.strip().splitlines()[-1:] or [f"exit code {self.returncode}"]
            return f"no result ({tail[0]})"
        return None


class _Progress(Protocol):
    progress: bool


def log(ctx: _Progress, message: str) -> None:
    if ctx.progress:
        print(message, file=sys.stderr, flush=True)


def tether_source() -> tuple[bool, str | None]:
    """(import it from src/, reason it is unavailable): decided without importing tether."""
    if importlib.util.find_spec("tether") is not None:
        return False, None
    if (SRC_DIR / "tether" / "__init__.py").exists():
        return True, None
    return False, "ModuleNotFoundError: No module named 'tether'"


def child_env(
    tether_from_src: bool, *, drop: Iterable[str] = (), set_vars: dict[str, str] | None = None
) -> dict[str, str]:
    """This process's environment without ``drop``, with ``set_vars``, for the child processes."""
    env = dict(os.environ)
    for name in drop:
        env.pop(name, None)
    env.update(set_vars or {})
    # benchmarks/ so every process imports the flow modules by one stable name; src/ when tether
    # is a checkout that is not installed.
    paths = [str(BENCH_DIR)] + ([str(SRC_DIR)] if tether_from_src else [])
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def spawn(
    script: str,
    child: str,
    args: Sequence[str],
    *,
    env: dict[str, str],
    timeout_s: float,
    cwd: Path | None = None,
) -> Child:
    """Run ``script --worker child *args`` to its end (or ``timeout_s``) and collect its result."""
    cmd = [sys.executable, str(Path(script).resolve()), "--worker", child, *args]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd,
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        # What the child wrote before the timeout comes raw, not decoded.
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        return Child({"error": f"timed out after {timeout_s:.0f} s"}, -1, timeout_s, err)
    data: dict[str, Any] = {}
    for line in proc.stdout.splitlines():
        if line.startswith(MARKER):
            data.update(json.loads(line[len(MARKER) :]))
    return Child(data, proc.returncode, time.perf_counter() - t0, proc.stderr)


# --- machine info ---------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _fs_type(path: Path) -> str:
    """Filesystem of path, from /proc/mounts (fsync costs differ wildly: tmpfs vs ext4)."""
    best, fstype = "", "?"
    with contextlib.suppress(OSError):
        resolved = str(path.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            mount = parts[1]
            under = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
            if under and len(mount) > len(best):
                best, fstype = mount, parts[2]
    return fstype


def _mem_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    return None


def loadavg() -> float | None:
    """1-minute load average: other work on a 2-core box skews every number here."""
    with contextlib.suppress(OSError, AttributeError):
        return round(os.getloadavg()[0], 2)
    return None


def dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(
    tmp_base: Path, *, mem: bool = False, tether: str | None = None, **extra: Any
) -> dict[str, Any]:
    """CPU, cores, OS, Python, SQLite, the temp dir's filesystem and the load now; with ``mem``
    the RAM, with ``tether`` its version, and ``extra`` last."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {"cpu": _cpu_model(), "cores": os.cpu_count(), "usable_cores": usable}
    if mem:
        info["mem_gib"] = _mem_gib()
    info["os"] = platform.platform()
    info["python"] = f"{platform.python_version()} ({platform.python_implementation()})"
    info["sqlite"] = sqlite3.sqlite_version
    if tether is not None:
        info["tether"] = tether
    info["tmp_dir"] = str(tmp_base)
    info["tmp_fs"] = _fs_type(tmp_base)
    info["loadavg_start"] = loadavg()
    return {**info, **extra}


def machine_was_busy(info: dict[str, Any]) -> bool:
    """Load average above half the usable cores at the start or the end (``loadavg_end``)."""
    loads = [x for x in (info["loadavg_start"], info["loadavg_end"]) if x is not None]
    return bool(loads) and max(loads) > 0.5 * (info["usable_cores"] or 1)


# --- numbers and tables ---------------------------------------------------------------------------


def quantile(xs: list[float], i: int, n: int) -> float:
    """The i-th of the n-quantiles of xs (inclusive method); the value itself for one sample."""
    if len(xs) < 2:
        return xs[0]
    return statistics.quantiles(xs, n=n, method="inclusive")[i - 1]


def table(header: list[str], rows: list[list[str]], numeric: set[int]) -> list[str]:
    """Aligned columns (those in ``numeric`` to the right) under a header and a rule of dashes.

    A row shorter than the header ends in a cell that spans the remaining columns, unpadded
    (a reason in place of numbers); its cells before that one align as usual.
    """
    widths = [len(h) for h in header]
    for cells in rows:
        sized = cells if len(cells) == len(header) else cells[:-1]
        for i, cell in enumerate(sized):
            widths[i] = max(widths[i], len(cell))

    def fmt(cells: list[str]) -> str:
        aligned = [
            f"{c:>{widths[i]}}" if i in numeric else f"{c:<{widths[i]}}"
            for i, c in enumerate(cells if len(cells) == len(header) else cells[:-1])
        ]
        if len(cells) != len(header):
            aligned.append(cells[-1])
        return "  ".join(aligned).rstrip()

    return [fmt(header), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)]
