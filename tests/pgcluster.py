"""A throwaway PostgreSQL cluster for the tests and benchmarks: ``initdb`` and ``pg_ctl`` from
the installed server binaries, in a temporary directory, listening on 127.0.0.1 only.

Found through ``QUARTERDECK_PG_BIN`` (a folder holding ``initdb``), ``initdb`` on ``PATH``, or
Debian's ``/usr/lib/postgresql/<version>/bin``. Run as root, the cluster belongs to the
``postgres`` user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import queue
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

ENABLE_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found: install them "
    "(Debian: apt-get install -y postgresql) or set QUARTERDECK_PG_BIN to their folder "
    "to run the PostgreSQL tests"
)
_names = itertools.count(1)
SPARE_DATABASES = 3
"""Empty databases kept made ahead of the tests that ask for one."""
CURRENT: dict[str, str] = {}
"""The database URL the running test's ``database`` fixture chose (pytest may import
``conftest`` twice under two names; this module is imported once)."""


def find_bin_dir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or None."""
    configured = os.environ.get("QUARTERDECK_PG_BIN")
    if configured:
        return Path(configured) if (Path(configured) / "initdb").exists() else None
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(found[0]).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgCluster:
    """One running throwaway cluster; :meth:`create_database` gives each test its own."""

    def __init__(self, bin_dir: Path, *, durable: bool = False) -> None:
        self.bin_dir = bin_dir
        self.durable = durable
        self.root = Path(tempfile.mkdtemp(prefix="qd-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._as_user: list[str] = []
        self._options = ""
        self._spares: queue.Queue[str] = queue.Queue(maxsize=SPARE_DATABASES)
        self._stopping = threading.Event()
        self._maker: threading.Thread | None = None
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as_user = ["setpriv", f"--reuid={owner.pw_uid}", f"--regid={owner.pw_gid}",
                             "--init-groups"]  # fmt: skip

    def _run(self, *args: str) -> None:
        subprocess.run(
            [*self._as_user, *args], check=True, capture_output=True, timeout=120, cwd=self.root
        )

    def start(self) -> PgCluster:
        """initdb and start the server; returns self."""
        self._run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "qd",
                  "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync")  # fmt: skip
        options = [
            "-c listen_addresses=127.0.0.1",
            f"-c port={self.port}",
            f"-c unix_socket_directories={self.root}",
            "-c max_connections=200",
        ]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._options = " ".join(options)
        self.start_server()
        return self

    def start_server(self) -> None:
        """Start the (initialised) server and wait until it accepts connections."""
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l",
                  str(self.root / "server.log"), "-o", self._options, "-w", "start")  # fmt: skip

    def stop_server(self) -> None:
        """Stop the server as an operator's restart does (``-m fast``: sessions are ended,
        open transactions roll back); :meth:`start_server` brings it back."""
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        """The ``postgresql://`` URL of ``database`` on this cluster."""
        return f"postgresql://qd@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh empty database; returns its URL. (``CREATE DATABASE`` takes about 0.3 s,
        so a background thread keeps a few spare ones made ahead; they are just as empty.)"""
        if self._maker is None:
            self._maker = threading.Thread(target=self._make_spares, daemon=True)
            self._maker.start()
        return self._spares.get(timeout=60)

    def _make_spares(self) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            while not self._stopping.is_set():
                name = f"qd_{os.getpid()}_{next(_names)}"
                conn.execute(f'CREATE DATABASE "{name}"')
                while not self._stopping.is_set():
                    try:
                        self._spares.put(self.url(name), timeout=0.2)
                        break
                    except queue.Full:
                        continue

    def clone_database(self, url: str, prefix: str = "qd_copy") -> str:
        """A new database made as a copy of the one at ``url`` (``CREATE DATABASE ... TEMPLATE``;
        nobody may be connected to it); returns the copy's URL."""
        import psycopg

        source = url.rsplit("/", 1)[1]
        name = f"{prefix}_{os.getpid()}_{next(_names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop the database at ``url`` (ending any session still connected to it); tests drop
        theirs at teardown so the cluster stays small."""
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Stop the server and remove its files."""
        self._stopping.set()
        if self._maker is not None:
            self._maker.join(timeout=10)
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                      "-w", "stop")  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)
