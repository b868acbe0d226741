"""A throwaway PostgreSQL cluster for tests: initdb into a temp dir, pg_ctl on a free
loopback port, stopped at the end. The server refuses to run as root, so as root the
cluster belongs to the `postgres` user and is driven through runuser."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


def server_bin() -> Path | None:
    """The directory with initdb and pg_ctl, or None if no PostgreSQL server is installed."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(candidate, "initdb")):
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_owner(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@dataclass
class Cluster:
    bin: Path
    data: Path
    port: int
    log: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            _as_owner([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                       "-w", "-t", "30", *args]),
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data} "
            # A test cluster: durability off for speed, enough connections for worker fleets.
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=300"
        )
        done = self.ctl("-o", options, "start")
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {done.stderr}\n{self.log.read_text()}")

    def stop(self, mode: str = "fast") -> None:
        self.ctl("-m", mode, "stop")

    def restart(self) -> None:
        done = self.ctl("-m", "fast", "restart")
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl restart failed: {done.stderr}")

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def start_cluster() -> Cluster:
    bin_dir = server_bin()
    if bin_dir is None:
        raise RuntimeError("no PostgreSQL server installed (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="tether-pg-"))
    os.chmod(root, 0o755)
    data = root / "data"
    data.mkdir()
    log = root / "server.log"
    log.touch()
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
        shutil.chown(log, "postgres", "postgres")
    done = subprocess.run(
        _as_owner([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres",
                   "--auth=trust", "-E", "UTF8", "--no-sync"]),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed: {done.stderr}")
    cluster = Cluster(bin_dir, data, _free_port(), log)
    cluster.start()
    return cluster


def remove(cluster: Cluster) -> None:
    cluster.stop("immediate")
    shutil.rmtree(cluster.data.parent, ignore_errors=True)
