"""User-hash A/B buckets, and the resolved, versioned serving config the load balancer reads.

The resolved config pins concrete model versions and bucket ranges:

    {"config_version": 4, "model_name": "recsys_feed", "salt": "feed-ab-v1", "buckets": 100,
     "arms": [{"name": "production", "model_version": 7, "buckets": [0, 90], "traffic_pct": 90},
              {"name": "holdback", "model_version": 6, "buckets": [90, 100], "traffic_pct": 10}]}

A user is in arm a when buckets[0] <= bucket(user) < buckets[1].
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable

import numpy as np

from recsys_assets.config.serving import ABSpec

SERVING_CONFIG_DIR = "serving_config"


def stable_hash(user_ids: np.ndarray, salt: str) -> np.ndarray:
    """First 8 bytes of md5("<salt>:<user_id>") as an unsigned big-endian integer, per user (reproducible in any
    language; Python's hash() is salted per process and pandas' hash is implementation-specific)."""
    out = np.empty(len(user_ids), dtype=np.uint64)
    prefix = f"{salt}:".encode()
    for i, u in enumerate(user_ids):
        out[i] = int.from_bytes(hashlib.md5(prefix + str(u).encode()).digest()[:8], "big")
    return out


def user_buckets(user_ids: np.ndarray, salt: str, buckets: int) -> np.ndarray:
    return (stable_hash(user_ids, salt) % np.uint64(buckets)).astype(np.int64)


def resolve_arms(spec: ABSpec, production: int | None, previous_production: int | None) -> tuple[list[dict], list[str]]:
    """Concrete versions and bucket ranges per arm, plus notes on arms whose traffic moved to the first arm."""
    if production is None:
        raise ValueError("no production model version: promote one before generating a serving config")
    named = {"production": production, "previous_production": previous_production}
    resolved, notes = [], []
    for arm in spec.arms:
        version = named[arm.model] if isinstance(arm.model, str) else arm.model
        resolved.append(
            {"name": arm.name, "model": arm.model, "model_version": version, "traffic_pct": arm.traffic_pct}
        )
    for arm in resolved[1:]:
        if arm["model_version"] is None:
            notes.append(
                f"arm {arm['name']!r} ({arm['model']}) has no model yet: its {arm['traffic_pct']}% goes to "
                f"arm {resolved[0]['name']!r}"
            )
            resolved[0]["traffic_pct"] += arm["traffic_pct"]
            arm["traffic_pct"] = 0.0
    # Boundaries from cumulative traffic, so rounding never leaves a gap or an overlap between arms.
    cum, start = 0.0, 0
    for arm in resolved:
        cum += arm["traffic_pct"]
        end = int(round(cum * spec.buckets / 100.0))
        arm["buckets"] = [start, end]
        start = end
    return resolved, notes


def validate_serving_config(
    cfg: dict, registered_versions: set[int], repository_versions: set[int], production: int | None
) -> list[str]:
    """Problems with a resolved serving config (empty list = valid)."""
    problems = []
    arms = cfg.get("arms") or []
    if not arms:
        return ["no arms"]
    total = sum(float(a.get("traffic_pct", 0)) for a in arms)
    if abs(total - 100.0) > 1e-9:
        problems.append(f"traffic splits sum to {total}, not 100")
    names = [a["name"] for a in arms]
    if len(set(names)) != len(names):
        problems.append(f"duplicate arm names {names}")
    n = int(cfg.get("buckets", 0))
    covered = np.zeros(n, dtype=np.int64)
    for a in arms:
        lo, hi = a["buckets"]
        if not 0 <= lo <= hi <= n:
            problems.append(f"arm {a['name']!r} bucket range {a['buckets']} outside [0, {n}]")
            continue
        covered[lo:hi] += 1
        width = hi - lo
        if abs(width - a["traffic_pct"] * n / 100.0) > 1.0:
            problems.append(f"arm {a['name']!r} has {width} of {n} buckets for {a['traffic_pct']}% of traffic")
        if a["traffic_pct"] > 0:
            v = a.get("model_version")
            if v not in registered_versions:
                problems.append(f"arm {a['name']!r} serves version {v}, which is not in the registry")
            if v not in repository_versions:
                problems.append(
                    f"arm {a['name']!r} serves version {v}, which has no complete release in the model repository"
                )
    if n and (covered != 1).any():
        bad = np.flatnonzero(covered != 1)
        problems.append(
            f"{len(bad)} buckets are covered {sorted(set(covered[bad].tolist()))} times (must be exactly once)"
        )
    production_arms = [a for a in arms if a.get("model") == "production"]
    if production_arms and any(a["model_version"] != production for a in production_arms):
        problems.append(
            f"production arm serves {production_arms[0]['model_version']}, registry production is {production}"
        )
    return problems


def arm_of_buckets(buckets: np.ndarray, cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    """(arm name, model version) per bucket value."""
    names = np.empty(len(buckets), dtype=object)
    versions = np.full(len(buckets), -1, dtype=np.int64)
    for a in cfg["arms"]:
        lo, hi = a["buckets"]
        m = (buckets >= lo) & (buckets < hi)
        names[m] = a["name"]
        versions[m] = -1 if a["model_version"] is None else int(a["model_version"])
    if (versions < 0).any():
        raise ValueError("serving config leaves some buckets without a model version")
    return names, versions


def log_path(template: str, store, day: str) -> str:
    """A serving.yaml log template resolved to a path on the store's filesystem: relative to the data root when it
    starts with {data_root}, else taken as a path on that filesystem as written."""
    if "{data_root}" not in template:
        return template.format(day=day)
    resolved = template.format(data_root="", day=day).lstrip("/")
    return store.path(*resolved.split("/"))


def config_path(store, version: int) -> str:
    return store.path(SERVING_CONFIG_DIR, f"serving_config.v{version}.json")


def current_config_path(store) -> str:
    return store.path(SERVING_CONFIG_DIR, "current.json")


def latest_config(store) -> dict | None:
    """The config being served (current.json): only ever a config that was valid when published."""
    p = current_config_path(store)
    return store.read_json(p) if store.exists(p) else None


def written_config_versions(store) -> list[int]:
    import pyarrow.fs as pafs

    infos = store.fs.get_file_info(pafs.FileSelector(store.path(SERVING_CONFIG_DIR), allow_not_found=True))
    found = (re.fullmatch(r"serving_config\.v(\d+)\.json", i.base_name) for i in infos)
    return sorted(int(m.group(1)) for m in found if m)


def latest_written_config(store) -> dict | None:
    """The newest config version written, served or withheld (what the validity check judges)."""
    versions = written_config_versions(store)
    return store.read_json(config_path(store, versions[-1])) if versions else latest_config(store)


def publish_config(
    store,
    arms: list[dict],
    spec: ABSpec,
    model_name: str,
    notes: list[str],
    extra: dict,
    problems_of: Callable[[dict], list[str]],
) -> tuple[dict, list[str]]:
    """Write a new config version if the arms changed (else return the current one) and serve it only if valid:
    serving_config.v<N>.json, then, when `problems_of(config)` finds nothing, current.json replaced atomically, so
    a polling load balancer always reads a complete, valid config. An invalid version is written (marked
    `withheld`, with its problems) for inspection, and current.json keeps the last valid one."""
    current = latest_config(store)
    body = {"model_name": model_name, "salt": spec.salt, "buckets": spec.buckets, "arms": arms}
    if current is not None and {k: current.get(k) for k in body} == json.loads(json.dumps(body)):
        return current, problems_of(current)
    version = max([(current or {}).get("config_version", 0), *written_config_versions(store)]) + 1
    cfg = {"config_version": version, **body, "notes": notes, **extra}
    problems = problems_of(cfg)
    if problems:
        cfg["withheld"] = problems
    store.write_json_atomic(config_path(store, version), cfg)
    if not problems:
        store.write_json_atomic(current_config_path(store), cfg)
    return cfg, problems


def serving_config_problems(store, conn, cfg: dict) -> list[str]:
    """validate_serving_config against what the registry and the model repository hold now: a served version must
    be registered and its release whole (every file present, with the hash release.json recorded)."""
    from recsys_assets.ml.release import release_problems
    from recsys_assets.serving import registry

    registered = {v.version for v in registry.list_versions(conn, cfg["model_name"])}
    production = registry.production_version(conn, cfg["model_name"])
    served = {a.get("model_version") for a in cfg.get("arms") or [] if a.get("traffic_pct", 0) > 0}
    broken = {v: release_problems(store, v) for v in served if isinstance(v, int)}
    whole = {v for v, problems in broken.items() if not problems}
    details = [p for v in sorted(broken) for p in broken[v][:3]]
    return validate_serving_config(cfg, registered, whole, production) + details


def resolved_serving_config(conn, spec) -> tuple[dict, list[str]]:
    """The config serving.yaml's A/B arms resolve to against the registry now (its body, without a version), and
    notes on arms whose traffic moved to the first arm."""
    from recsys_assets.serving import registry

    production = registry.production_version(conn, spec.model_name)
    previous = registry.previous_production_version(conn, spec.model_name)
    arms, notes = resolve_arms(spec.ab, production, previous)
    return {"model_name": spec.model_name, "salt": spec.ab.salt, "buckets": spec.ab.buckets, "arms": arms}, notes


def publish_serving_config(store, conn, spec) -> tuple[dict, list[str]]:
    """Resolve the A/B arms of serving.yaml against the registry (as `conn` sees it, an open transaction included)
    and write a new config version if they changed."""
    import datetime as dt

    body, notes = resolved_serving_config(conn, spec)
    return publish_config(
        store,
        body["arms"],
        spec.ab,
        spec.model_name,
        notes,
        {"created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")},
        lambda cfg: serving_config_problems(store, conn, cfg),
    )


def complete_log_path(store, template: str, day: str, what: str) -> str:
    """log_path of a day of a serving-side log, which must be complete (its _SUCCESS marker exists; a Failure
    naming `what` otherwise)."""
    import posixpath

    from dagster import Failure

    path = log_path(template, store, day)
    if not store.exists(posixpath.join(path, "_SUCCESS")):
        raise Failure(f"{what} not found (no _SUCCESS under {path}); the serving side's log export writes it")
    return path


def read_log(store, template: str, day: str, what: str):
    """A complete day of a serving-side log (Parquet under log_path) as pandas."""
    import pyarrow.dataset as pads

    path = complete_log_path(store, template, day, what)
    return pads.dataset(path, filesystem=store.fs, format="parquet").to_table().to_pandas()
