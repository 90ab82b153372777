"""Model registry in PostgreSQL: every exported release (a versioned set of ranker, towers and indexes in the model
repository), the data partitions and code it came from, its metrics and checks, and which version serves
production. Promotion and rollback are single transactions that append to a deployment log.

Command line (one command to roll back):

    python -m recsys_assets.serving.registry list
    python -m recsys_assets.serving.registry promote --version 3 --reason "manual"
    python -m recsys_assets.serving.registry rollback --reason "CTR dropped"

Connection from RECSYS_PG_HOST / _PORT / _USER / _PASSWORD / _DB (defaults: 127.0.0.1:5432, postgres, recsys). A
rollback pins production: automatic promotion of newer days leaves it alone until a person promotes a version.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass

DDL = """
CREATE TABLE IF NOT EXISTS model_versions (
    model_name      text        NOT NULL,
    version         integer     NOT NULL,
    partition_day   date        NOT NULL,
    fingerprint     text        NOT NULL,
    repository_uri  text        NOT NULL,
    code_version    text        NOT NULL,
    data_versions   jsonb       NOT NULL,
    components      jsonb       NOT NULL,
    metrics         jsonb       NOT NULL,
    checks          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    checks_passed   boolean     NOT NULL DEFAULT false,
    run_id          text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_name, version),
    UNIQUE (model_name, fingerprint)
);
CREATE TABLE IF NOT EXISTS model_production (
    model_name      text PRIMARY KEY,
    version         integer     NOT NULL,
    since           timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (model_name, version) REFERENCES model_versions (model_name, version)
);
CREATE TABLE IF NOT EXISTS model_deployments (
    id              bigserial PRIMARY KEY,
    model_name      text        NOT NULL,
    action          text        NOT NULL CHECK (action IN ('promote', 'rollback')),
    from_version    integer,
    to_version      integer     NOT NULL,
    reason          text        NOT NULL DEFAULT '',
    actor           text        NOT NULL DEFAULT '',
    at              timestamptz NOT NULL DEFAULT now()
);
"""


class PromotionRefused(RuntimeError):
    """Promotion or rollback that the registry will not do (failed checks, unknown version, nothing to roll back to)."""


@dataclass(frozen=True)
class ModelVersion:
    model_name: str
    version: int
    partition_day: str
    repository_uri: str
    code_version: str
    data_versions: dict
    components: dict
    metrics: dict
    checks: dict
    checks_passed: bool

    @classmethod
    def from_row(cls, row) -> ModelVersion:
        return cls(row[0], int(row[1]), str(row[2]), row[3], row[4], row[5], row[6], row[7], row[8], bool(row[9]))


_COLS = (
    "model_name, version, partition_day, repository_uri, code_version, data_versions, components, metrics, checks, "
    "checks_passed"
)


def ensure_schema(conn) -> None:
    with conn.cursor() as cur:
        # Serialise concurrent first-time DDL from parallel runs.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('recsys_registry_ddl'))")
        cur.execute(DDL)
    conn.commit()


def _lock_model(cur, model_name: str) -> None:
    """Serialise version allocation, promotion and rollback of one model (held until the transaction ends)."""
    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"registry:{model_name}",))


def register_version(
    conn,
    model_name: str,
    partition_day: str,
    fingerprint: str,
    repository_uri: str,
    code_version: str,
    data_versions: dict,
    components: dict,
    metrics: dict,
    run_id: str | None = None,
) -> tuple[int, bool]:
    """The version of this release: the existing one if the same fingerprint (same source artifacts) was
    registered before (reruns are idempotent), else the next integer. Returns (version, created)."""
    with conn.cursor() as cur:
        _lock_model(cur, model_name)
        cur.execute(
            "SELECT version FROM model_versions WHERE model_name = %s AND fingerprint = %s", (model_name, fingerprint)
        )
        row = cur.fetchone()
        if row:
            conn.commit()
            return int(row[0]), False
        cur.execute("SELECT coalesce(max(version), 0) + 1 FROM model_versions WHERE model_name = %s", (model_name,))
        version = int(cur.fetchone()[0])
        cur.execute(
            "INSERT INTO model_versions (model_name, version, partition_day, fingerprint, repository_uri, code_version,"
            " data_versions, components, metrics, run_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                model_name,
                version,
                partition_day,
                fingerprint,
                repository_uri,
                code_version,
                json.dumps(data_versions),
                json.dumps(components),
                json.dumps(metrics),
                run_id,
            ),
        )
    conn.commit()
    return version, True


def set_components(conn, model_name: str, version: int, components: dict) -> None:
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE model_versions SET components = %s WHERE model_name = %s AND version = %s",
            (json.dumps(components), model_name, version),
        )
    conn.commit()


def version_for_fingerprint(conn, model_name: str, fingerprint: str) -> int | None:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT version FROM model_versions WHERE model_name = %s AND fingerprint = %s", (model_name, fingerprint)
        )
        row = cur.fetchone()
    return int(row[0]) if row else None


def record_checks(conn, model_name: str, version: int, checks: dict[str, bool]) -> bool:
    """Store the blocking checks' outcomes for a version; returns whether all passed (and at least one exists)."""
    passed = bool(checks) and all(checks.values())
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE model_versions SET checks = %s, checks_passed = %s WHERE model_name = %s AND version = %s",
            (json.dumps(checks), passed, model_name, version),
        )
        if cur.rowcount != 1:
            raise PromotionRefused(f"{model_name} version {version} is not registered")
    conn.commit()
    return passed


def list_versions(conn, model_name: str) -> list[ModelVersion]:
    with conn.cursor() as cur:
        cur.execute(f"SELECT {_COLS} FROM model_versions WHERE model_name = %s ORDER BY version", (model_name,))
        return [ModelVersion.from_row(r) for r in cur.fetchall()]


def production_version(conn, model_name: str) -> int | None:
    with conn.cursor() as cur:
        cur.execute("SELECT version FROM model_production WHERE model_name = %s", (model_name,))
        row = cur.fetchone()
    return int(row[0]) if row else None


def previous_production_version(conn, model_name: str) -> int | None:
    """The version the current production version replaced when it was promoted (what a rollback returns to)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT d.from_version FROM model_deployments d JOIN model_production p USING (model_name) "
            "WHERE d.model_name = %s AND d.to_version = p.version AND d.action = 'promote' "
            "ORDER BY d.id DESC LIMIT 1",
            (model_name,),
        )
        row = cur.fetchone()
    return int(row[0]) if row and row[0] is not None else None


def deployments(conn, model_name: str) -> list[dict]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT id, action, from_version, to_version, reason, actor, at FROM model_deployments "
            "WHERE model_name = %s ORDER BY id",
            (model_name,),
        )
        return [
            dict(zip(("id", "action", "from_version", "to_version", "reason", "actor", "at"), r))
            for r in cur.fetchall()
        ]


def _set_production(cur, model_name: str, action: str, to_version: int, reason: str, actor: str) -> int | None:
    cur.execute("SELECT version FROM model_production WHERE model_name = %s FOR UPDATE", (model_name,))
    row = cur.fetchone()
    current = int(row[0]) if row else None
    if current == to_version:
        return current
    cur.execute(
        "INSERT INTO model_production (model_name, version, since) VALUES (%s, %s, now()) "
        "ON CONFLICT (model_name) DO UPDATE SET version = EXCLUDED.version, since = EXCLUDED.since",
        (model_name, to_version),
    )
    cur.execute(
        "INSERT INTO model_deployments (model_name, action, from_version, to_version, reason, actor) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (model_name, action, current, to_version, reason, actor),
    )
    return current


def promote(conn, model_name: str, version: int, reason: str = "", actor: str = "", commit: bool = True) -> int | None:
    """Make `version` production if its blocking checks passed; returns the replaced version. One transaction,
    committed here unless `commit` is False (the caller commits it with what must change together)."""
    with conn.cursor() as cur:
        _lock_model(cur, model_name)
        cur.execute(
            "SELECT checks_passed, checks FROM model_versions WHERE model_name = %s AND version = %s",
            (model_name, version),
        )
        row = cur.fetchone()
        if row is None:
            conn.rollback()
            raise PromotionRefused(f"{model_name} version {version} is not registered")
        if not row[0]:
            conn.rollback()
            failed = sorted(k for k, v in (row[1] or {}).items() if not v) or ["no blocking check results recorded"]
            raise PromotionRefused(
                f"{model_name} version {version} did not pass its blocking checks: {', '.join(failed)}"
            )
        replaced = _set_production(cur, model_name, "promote", version, reason, actor)
    if commit:
        conn.commit()
    return replaced


def rollback_target(conn, model_name: str) -> tuple[int, int]:
    """(production, the version it replaced when it was promoted): what a rollback would do, changing nothing.
    Successive rollbacks walk back through promotions (v3 -> v2 -> v1), they do not toggle between the last two."""
    current = production_version(conn, model_name)
    if current is None:
        raise PromotionRefused(f"{model_name} has no production version to roll back from")
    with conn.cursor() as cur:
        cur.execute(
            "SELECT from_version FROM model_deployments WHERE model_name = %s AND to_version = %s "
            "AND action = 'promote' ORDER BY id DESC LIMIT 1",
            (model_name, current),
        )
        prev = cur.fetchone()
    if prev is None or prev[0] is None:
        raise PromotionRefused(
            f"{model_name} version {current} is the first production version: nothing to roll back to"
        )
    return current, int(prev[0])


def rollback(conn, model_name: str, reason: str = "", actor: str = "", commit: bool = True) -> tuple[int, int]:
    """Return production to the version it served before the current one. Returns (from_version, to_version).
    Committed here unless `commit` is False."""
    with conn.cursor() as cur:
        _lock_model(cur, model_name)
        try:
            current, target = rollback_target(conn, model_name)
        except PromotionRefused:
            conn.rollback()
            raise
        _set_production(cur, model_name, "rollback", target, reason, actor)
    if commit:
        conn.commit()
    return current, target


def pin(conn, model_name: str) -> dict | None:
    """The rollback that pins production, if the newest deployment is one: automatic promotion leaves production
    alone until a person promotes a version again (`promote`), which unpins it."""
    log = deployments(conn, model_name)
    return log[-1] if log and log[-1]["action"] == "rollback" else None


def _connect_from_env():
    from resources.postgres import PostgresResource

    return PostgresResource.from_env().connect()


def main(argv: list[str] | None = None) -> int:
    """promote / rollback do what the UI's jobs do: verify the target release, change the registry and republish the
    serving config together (recsys_assets/serving/releases.py); the data root and serving YAML come from the same
    environment variables as the deployment's (RECSYS_DATA_ROOT, RECSYS_SERVING_CONFIG)."""
    from recsys_assets.config.files import deployment_config_path
    from recsys_assets.config.serving import load_serving_spec
    from recsys_assets.serving.releases import promote_version, rollback_production
    from resources.storage import data_root_from_env
    from resources.store import DatasetStore

    p = argparse.ArgumentParser(prog="python -m recsys_assets.serving.registry", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list")
    pr = sub.add_parser("promote", help="make a version production (a person's decision: unpins a rollback)")
    pr.add_argument("--version", type=int, required=True)
    pr.add_argument("--reason", default="manual promotion")
    rb = sub.add_parser("rollback", help="production back to the version it replaced (pins it)")
    rb.add_argument("--reason", default="manual rollback")
    a = p.parse_args(argv)
    actor = os.environ.get("USER", "cli")
    spec = load_serving_spec(deployment_config_path("serving") or None)
    store = DatasetStore(data_root_from_env())
    with _connect_from_env() as conn:
        ensure_schema(conn)
        if a.cmd == "list":
            prod, pinned = production_version(conn, spec.model_name), pin(conn, spec.model_name)
            for v in list_versions(conn, spec.model_name):
                flag = ("production" + (" (pinned by rollback)" if pinned else "")) if v.version == prod else ""
                print(
                    f"{v.version:>4}  {v.partition_day}  checks={'pass' if v.checks_passed else 'FAIL/none'}  "
                    f"code={v.code_version[:12]}  {flag}"
                )
        elif a.cmd == "promote":
            replaced, cfg = promote_version(store, conn, spec, a.version, a.reason, actor)
            print(f"{spec.model_name}: production {replaced} -> {a.version}; serving config v{cfg['config_version']}")
        else:
            frm, to, cfg = rollback_production(store, conn, spec, a.reason, actor)
            print(
                f"{spec.model_name}: rolled back production {frm} -> {to} (pinned until a person promotes); "
                f"serving config v{cfg['config_version']}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
