"""A throwaway PostgreSQL cluster for the tests, from the `pgserver` wheel's real server
binaries (installed by `bash scripts/install.sh --dev`): no system package, no Docker.

The cluster lives in a temporary folder and listens on a Unix socket in it only (no TCP
port, so parallel test runs never collide). PostgreSQL refuses to run as root; under root
(CI) `pgserver` runs the server as its own unprivileged system user `pgserver`, creating it
with `useradd` the first time and making the folder readable to it.

Example:
    >>> cluster = PostgresCluster.start(tmp_path / "pg")
    >>> url = cluster.new_database()      # postgresql+psycopg://postgres@/t_.../?host=...
    >>> cluster.drop_database(url); cluster.stop()
"""

from __future__ import annotations

import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg


@dataclass
class PostgresCluster:
    server: Any  # pgserver.PostgresServer
    socket_dir: str

    @classmethod
    def start(cls, pgdata: Path) -> PostgresCluster:
        with warnings.catch_warnings():  # platformdirs: "XDG_RUNTIME_DIR is not set" (CI)
            warnings.simplefilter("ignore")
            import pgserver

        pgdata.parent.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(pgdata, cleanup_mode="delete")
        # get_uri(): postgresql://postgres:@/postgres?host=<socket dir>
        query = urlsplit(server.get_uri("postgres")).query
        socket_dir = dict(p.split("=", 1) for p in query.split("&"))["host"]
        return cls(server, socket_dir)

    def _admin(self) -> psycopg.Connection:
        return psycopg.connect(
            dbname="postgres", user="postgres", host=self.socket_dir, autocommit=True
        )

    def new_database(self) -> str:
        """Create an empty database; returns its SQLAlchemy URL (psycopg 3 driver)."""
        name = "t_" + secrets.token_hex(6)
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@/{name}?host={self.socket_dir}"

    def drop_database(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        self.server.cleanup()
