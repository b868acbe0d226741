"""No password of a store URL is ever printed: not in error messages, `--debug` output
(tracebacks included), logs or reprs, in any of the three forms a PostgreSQL URL carries one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import tether
from backend import BACKEND
from helpers import SRC, TESTS
from tether._core.config import Settings
from tether.store import redact


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw1@h/db", "postgresql://u:***@h/db"),
        ("postgres://u:p@ss:w0rd@h:5432/db?sslmode=require", "postgres://u:***@h:5432/db?sslmode=require"),
        ("postgresql://u@h/db?password=pw2&sslmode=x", "postgresql://u@h/db?password=***&sslmode=x"),
        ("postgresql://h/db?sslmode=x&PASSWORD=pw3", "postgresql://h/db?sslmode=x&PASSWORD=***"),
        ("host=h password=pw4 dbname=x", "host=h password=*** dbname=x"),
        ("host=h password = 'a b\\' c' dbname=x", "host=h password = *** dbname=x"),
        ("host=h sslpassword=pw5", "host=h sslpassword=***"),
        ("sqlite:///srv/app/.tether/tether.db", "sqlite:///srv/app/.tether/tether.db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
    ],
)  # fmt: skip
def test_every_password_form_is_hidden(url: str, shown: str) -> None:
    assert redact(url) == shown
    assert redact(f"cannot connect to {url}: refused") == f"cannot connect to {shown}: refused"


def test_a_known_password_is_hidden_wherever_a_message_quotes_it() -> None:
    url = "postgresql://u:hunter22@h:port/db"
    message = 'invalid integer value "port" near "hunter22@h"'
    assert "hunter22" not in redact(message, url)
    assert redact("no secret here", url) == "no secret here"


def test_settings_show_the_store_without_its_password() -> None:
    shown = repr(Settings(db="postgresql://u:pw-in-repr@h/db"))
    assert "pw-in-repr" not in shown and "postgresql://u:***@h/db" in shown


def test_configure_names_a_bad_url_without_its_password() -> None:
    with pytest.raises(tether.ConfigurationError) as error:
        tether.configure(db="host=h password=pw-in-config dbname=x")
    assert "pw-in-config" not in str(error.value)
    assert "password=***" in str(error.value)


UNREACHABLE = "127.0.0.1:1"  # nothing listens on port 1: connecting is refused


def tether_cli(args: list[str], db: str | None, cwd: Path) -> subprocess.Popen[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{TESTS}:{SRC}", "HOME": str(cwd)}
    if db is not None:
        env["TETHER_DB"] = db
    return subprocess.Popen(
        [sys.executable, "-m", "tether", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_failing_commands_never_print_a_password(tmp_path: Path) -> None:
    secrets = [f"S3cret-{i}" for i in range(8)]
    at = f"@{UNREACHABLE}/db"
    runs = [
        # A server that refuses: the error and --debug (its store line and traceback).
        (["executions", "list", "--db", f"postgresql://u:{secrets[0]}{at}"], None),
        (["--debug", "executions", "list", "--db", f"postgresql://u:{secrets[1]}{at}"], None),
        (["--debug", "executions", "get", "x"], f"postgresql://u{at}?password={secrets[2]}"),
        (["--debug", "worker"], f"postgresql://u:{secrets[3]}{at}?password={secrets[3]}"),
        # A URL the driver cannot parse (it quotes the bad part) and ones tether refuses.
        (["--debug", "memory", "list", "--db", f"postgresql://u:{secrets[4]}@h:notaport/db"], None),
        (["executions", "list", "--db", f"host=h password={secrets[5]} dbname=x"], None),
        (["--debug", "executions", "waits"], f"host=h password='{secrets[6]} x' dbname=x"),
        (["--debug", "executions", "list", "--db", f"mysql://u:{secrets[7]}@h/db"], None),
    ]  # fmt: skip
    # Started together: a refused connection is retried for the store's connect timeout.
    started = [(args, tether_cli(args, db, tmp_path)) for args, db in runs]
    for (args, process), secret in zip(started, secrets, strict=True):
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode != 0, (args, stdout, stderr)
        assert "error" in (stdout + stderr).lower(), (args, stdout, stderr)
        assert secret not in stdout + stderr, (args, stdout, stderr)
        assert "***" in stdout + stderr, (args, stdout, stderr)


@pytest.mark.skipif(BACKEND != "postgres", reason="a PostgreSQL URL carries a password")
def test_a_working_store_url_never_shows_its_password(db_url: str, tmp_path: Path) -> None:
    # The test cluster trusts local connections: a password in the URL is accepted, unused.
    secret = "S3cret-live"
    with_user = db_url.replace("postgres@", f"postgres:{secret}@")
    with_query = f"{db_url}?password={secret}"
    for url in (with_user, with_query):
        with pytest.raises(tether.ExecutionNotFound) as error:
            tether.Client(url).get("nope")
        assert secret not in str(error.value) and "***" in str(error.value)
        process = tether_cli(["--debug", "executions", "get", "nope", "--db", url], None, tmp_path)
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 1, stderr
        assert "store: postgresql://" in stderr and "no execution nope in" in stderr, stderr
        assert secret not in stdout + stderr, stderr
