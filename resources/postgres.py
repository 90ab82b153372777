"""PostgreSQL for the serving hand-off: the model registry, the published `feed` table and serving metadata.

Connection settings come from resource config (EnvVar in Definitions); the password is never logged or put in
metadata: `describe()` is what may be shown.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from dagster import ConfigurableResource, EnvVar
from pydantic import Field

# field -> (environment variable, default): the one place a deployment's connection settings are named.
ENV = {
    "host": ("RECSYS_PG_HOST", "127.0.0.1"),
    "port": ("RECSYS_PG_PORT", "5432"),
    "user": ("RECSYS_PG_USER", "postgres"),
    "password": ("RECSYS_PG_PASSWORD", ""),
    "dbname": ("RECSYS_PG_DB", "recsys"),
}


class PostgresResource(ConfigurableResource):
    host: str = Field(default="127.0.0.1", description="RECSYS_PG_HOST")
    port: int = Field(default=5432, description="RECSYS_PG_PORT")
    user: str = Field(default="postgres", description="RECSYS_PG_USER")
    password: str = Field(default="", description="RECSYS_PG_PASSWORD (secret: from the environment only)")
    dbname: str = Field(default="recsys", description="RECSYS_PG_DB")
    connect_timeout_s: int = 10

    @classmethod
    def from_env(cls, deferred: bool = False) -> PostgresResource:
        """The deployment's connection from RECSYS_PG_*: with `deferred` (Definitions), an EnvVar for each variable
        that is set, resolved in the run and never stored; else the values now (the registry CLI)."""
        values: dict = {}
        for name, (var, default) in ENV.items():
            if deferred and os.environ.get(var) and name != "port":
                values[name] = EnvVar(var)
            else:
                values[name] = os.environ.get(var, default)
        values["port"] = int(values["port"])
        return cls(**values)

    def describe(self) -> str:
        """host:port/db as user, without the password."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"

    def _params(self, dbname: str | None = None) -> dict:
        params = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "dbname": dbname or self.dbname,
            "connect_timeout": self.connect_timeout_s,
            "application_name": "recsys-platform",
        }
        if self.password:
            params["password"] = self.password
        return params

    @contextlib.contextmanager
    def connect(self) -> Iterator:
        """A psycopg2 connection; the caller commits. Rolled back and closed on error."""
        import psycopg2

        conn = psycopg2.connect(**self._params())
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()

    @contextlib.contextmanager
    def _admin_cursor(self) -> Iterator:
        """An autocommit cursor on the server's `postgres` database (CREATE/DROP DATABASE cannot run in a
        transaction)."""
        import psycopg2

        conn = psycopg2.connect(**self._params("postgres"))
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                yield cur
        finally:
            conn.close()

    def ensure_database(self) -> bool:
        """Create the database if it does not exist (demo / first deployment). True when it was created."""
        from psycopg2 import sql

        with self._admin_cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.dbname,))
            if cur.fetchone():
                return False
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.dbname)))
            return True

    def drop_database(self) -> None:
        """Drop the database, disconnecting its sessions (the demo's fresh start)."""
        from psycopg2 import sql

        with self._admin_cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.dbname)))
