"""A private PostgreSQL server started in a data directory, for `tiercel server local`.

The server binaries come from the `pgserver` wheel; when it is not importable, `initdb` and
`pg_ctl` found on PATH are used instead. The server listens on a Unix socket inside the data
directory only, and is stopped when the owner calls `stop()` (or leaves the context).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import platformdirs

from engine.errors import DatabaseUnavailable

log = logging.getLogger(__name__)


def default_data_dir() -> Path:
    """Where `tiercel server local` keeps its data unless told otherwise."""
    return Path(platformdirs.user_data_dir("tiercel"))


def _ensure_runtime_dir() -> None:
    # pgserver keeps a lock file in the user's runtime dir, which a service may lack.
    if os.environ.get("XDG_RUNTIME_DIR"):
        return
    path = Path(tempfile.gettempdir()) / f"tiercel-runtime-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    os.environ["XDG_RUNTIME_DIR"] = str(path)


class EmbeddedPostgres:
    """Start, reuse and stop a PostgreSQL server whose cluster lives in `data_dir/postgres`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.pgdata = self.data_dir / "postgres"
        self._server: Any = None
        self._pg_ctl: str | None = None
        self.url = ""

    def start(self) -> str:
        """Start the server (initialising the cluster the first time) and return its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _ensure_runtime_dir()
        try:
            import pgserver
        except ImportError:
            return self._start_from_path()
        try:
            self._server = pgserver.get_server(  # type: ignore[attr-defined]
                self.pgdata, cleanup_mode="stop"
            )
        except Exception as exc:
            raise DatabaseUnavailable(
                f"Could not start the embedded PostgreSQL in {self.pgdata}: {exc}. "
                "Check the log in that directory, or pass --database-url to use another server."
            ) from exc
        self.url = str(self._server.get_uri())
        return self.url

    def _start_from_path(self) -> str:
        initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
        if not initdb or not pg_ctl:
            raise DatabaseUnavailable(
                "No PostgreSQL binaries found: install the `pgserver` package (pip install "
                "pgserver) or put initdb and pg_ctl on PATH, or pass --database-url."
            )
        if not (self.pgdata / "PG_VERSION").exists():
            subprocess.run(
                [initdb, "-D", str(self.pgdata), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                check=True,
                capture_output=True,
            )
        sock = str(self.pgdata)
        subprocess.run(
            [
                pg_ctl,
                "-D",
                str(self.pgdata),
                "-l",
                str(self.pgdata / "log"),
                "-o",
                f"-k {sock} -c listen_addresses=''",
                "-w",
                "start",
            ],
            check=True,
            capture_output=True,
        )
        self._pg_ctl = pg_ctl
        self.url = f"postgresql://postgres@/postgres?host={sock}"
        return self.url

    def stop(self) -> None:
        """Stop the server; safe to call twice."""
        if self._server is not None:
            server, self._server = self._server, None
            server.cleanup()
        if self._pg_ctl is not None:
            pg_ctl, self._pg_ctl = self._pg_ctl, None
            subprocess.run(
                [pg_ctl, "-D", str(self.pgdata), "-m", "fast", "-w", "stop"],
                check=False,
                capture_output=True,
            )

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
