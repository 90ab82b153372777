"""Export a day's models and indexes as a Triton-style model repository and load a release back for serving.

Layout under <data_root>/model_repository (Triton's: one directory per model, integer version directories, a
config.pbtxt per model):

    recsys_ranker/config.pbtxt            recsys_ranker/<v>/model.pt2 (+ vocab, moments, model_config.json, and
                                          item_trend.parquet when the ranker reads the items' trend inputs)
    recsys_query_tower/config.pbtxt       recsys_query_tower/<v>/model.pt2 (+ vocab, moments, model_config.json)
    recsys_item_tower/config.pbtxt        recsys_item_tower/<v>/model.pt2 (+ vocab, moments, model_config.json)
    recsys_retrieval_index/config.pbtxt   recsys_retrieval_index/<v>/index.faiss, items.parquet, index.json
    recsys_cold_start_index/config.pbtxt  recsys_cold_start_index/<v>/index.faiss, items.parquet, index.json
    recsys_feed/config.pbtxt              recsys_feed/<v>/release.json, item_features.parquet

Version v is the registry version (one integer for the whole release, so a query tower is never served with
another model's index). `recsys_feed/<v>/release.json` is written last: a version without it is incomplete and is
never loaded. The .pt2 files are torch.export programs with a dynamic batch dimension; config.pbtxt declares
their tensors in Triton's model-configuration text format (backend "pytorch"), so a Triton PyTorch backend that
loads ExportedPrograms, or our own loader below, can serve them.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_assets.core.datasets import COLD_START_INDEX, RANKER_MODEL, RETRIEVAL_INDEX, RETRIEVAL_MODEL
from recsys_assets.core.store_dirs import StoreDir
from recsys_assets.ml.artifacts import ArtifactDir
from recsys_assets.ml.features import ITEM_CATALOG_COLUMNS, ItemCatalog, Vocab, build_item_catalog
from recsys_assets.ml.trend import RANKER_ITEM_TREND, ItemTrend, trend_rows
from resources.store import DatasetStore

REPOSITORY = "model_repository"
RELEASE_MODEL = "recsys_feed"
RELEASE_FILE = "release.json"
ITEM_FEATURES = "item_features.parquet"

# Triton model name -> (source dataset, {source file: file in the version directory})
_MODEL_FILES = {
    "vocab.parquet": "vocab.parquet",
    "feature_moments.json": "feature_moments.json",
    "model_config.json": "model_config.json",
}
COMPONENTS: dict[str, tuple[str, dict[str, str]]] = {
    "recsys_ranker": (RANKER_MODEL, {"ranker.pt2": "model.pt2", **_MODEL_FILES}),
    "recsys_query_tower": (RETRIEVAL_MODEL, {"query_tower.pt2": "model.pt2", **_MODEL_FILES}),
    "recsys_item_tower": (RETRIEVAL_MODEL, {"item_tower.pt2": "model.pt2", **_MODEL_FILES}),
    "recsys_retrieval_index": (
        RETRIEVAL_INDEX,
        {"index.faiss": "index.faiss", "items.parquet": "items.parquet", "index.json": "index.json"},
    ),
    "recsys_cold_start_index": (
        COLD_START_INDEX,
        {"index.faiss": "index.faiss", "items.parquet": "items.parquet", "index.json": "index.json"},
    ),
}


def repository_path(store: DatasetStore, *parts: str) -> str:
    return store.path(REPOSITORY, *parts)


def _tensor(name: str, dtype: str, dims: list[int]) -> str:
    return f'  {{ name: "{name}" data_type: {dtype} dims: [ {", ".join(str(d) for d in dims)} ] }}'


def _history_tensors(length: int, content_dim: int) -> list[str]:
    """The user's last positives, newest first: item_id vocab ids (0 = padding) and their content embeddings."""
    return [
        _tensor("hist_ids", "TYPE_INT64", [-1, length]),
        _tensor("hist_content", "TYPE_FP32", [-1, length, content_dim]),
    ]


def triton_config(name: str, model_config: dict | None, index_info: dict | None = None) -> str:
    """config.pbtxt text for one component (Triton model-configuration text format)."""
    lines = [f'name: "{name}"']
    if name == RELEASE_MODEL:
        lines += [
            'platform: "ensemble"',
            "max_batch_size: 0",
            "# Retrieval (query tower -> retrieval index) then ranking; release.json pins component versions.",
        ]
    elif name in ("recsys_ranker", "recsys_query_tower", "recsys_item_tower"):
        assert model_config is not None
        lines += ['backend: "pytorch"', "max_batch_size: 0", 'default_model_filename: "model.pt2"']
        if name == "recsys_ranker":
            inputs = [
                _tensor("cat", "TYPE_INT64", [-1, len(model_config["cat_features"])]),
                _tensor("dense", "TYPE_FP32", [-1, model_config["num_dense"]]),
                _tensor("content", "TYPE_FP32", [-1, model_config["content_dim"]]),
            ]
            if model_config.get("history_len"):
                # grouped: hist_* have one row per user and pair_user names each pair's user (their row)
                inputs += _history_tensors(model_config["history_len"], model_config["content_dim"])
                if model_config.get("grouped_history"):
                    inputs.append(_tensor("pair_user", "TYPE_INT64", [-1]))
                if model_config.get("history_time_gaps"):  # after pair_user: hours from each entry to the day
                    inputs.append(_tensor("hist_age", "TYPE_FP32", [-1, model_config["history_len"]]))
            outputs = [_tensor("logits", "TYPE_FP32", [-1, len(model_config["tasks"])])]
            params = {"tasks": ",".join(model_config["tasks"]), "cat_features": ",".join(model_config["cat_features"])}
        else:
            tower = model_config["query" if name == "recsys_query_tower" else "item"]
            inputs = [
                _tensor("cat", "TYPE_INT64", [-1, len(tower["cardinalities"])]),
                _tensor("dense", "TYPE_FP32", [-1, tower["num_dense"]]),
            ]
            if name == "recsys_item_tower":
                inputs.append(_tensor("content", "TYPE_FP32", [-1, tower["content_dim"]]))
            elif model_config.get("history_len"):
                inputs += _history_tensors(model_config["history_len"], tower["content_dim"])
                if model_config.get("history_time_gaps"):  # hours from each entry to the serving day
                    inputs.append(_tensor("hist_age", "TYPE_FP32", [-1, model_config["history_len"]]))
            outputs = [_tensor("embedding", "TYPE_FP32", [-1, tower["output_dim"]])]
            params = {"normalized": "true"}
        lines += ["input [", ",\n".join(inputs), "]", "output [", ",\n".join(outputs), "]"]
        lines += [f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items()]
    else:
        info = index_info or {}
        lines += [
            'backend: "faiss"',
            "max_batch_size: 0",
            "input [",
            _tensor("query", "TYPE_FP32", [-1, int(info.get("dim", -1))]),
            "]",
            "output [",
            _tensor("item_row", "TYPE_INT64", [-1, -1]) + ",",
            _tensor("score", "TYPE_FP32", [-1, -1]),
            "]",
        ]
        lines += [
            f'parameters {{ key: "{k}" value: {{ string_value: "{info[k]}" }} }}'
            for k in ("type", "metric", "nprobe")
            if k in info
        ]
    lines.append("version_policy: { latest: { num_versions: 3 } }")
    return "\n".join(lines) + "\n"


def release_fingerprint(source_versions: dict[str, str]) -> str:
    """Identity of a release: the committed versions of its source artifacts (same sources -> same release)."""
    return json.dumps(sorted(source_versions.items()))


def source_versions(store: DatasetStore, day: str) -> dict[str, str]:
    return {
        ds: store.committed_version(ds, day)
        for ds in (RANKER_MODEL, RETRIEVAL_MODEL, RETRIEVAL_INDEX, COLD_START_INDEX)
    }


def version_dir(store: DatasetStore, model: str, version: int) -> StoreDir:
    return StoreDir(store, repository_path(store, model, str(version)))


def export_release(store: DatasetStore, day: str, version: int, item_features: pa.Table, extra: dict) -> dict:
    """Copy the day's committed artifacts into <component>/<version>/, write each config.pbtxt, then the release
    manifest last. Rerunning with the same version rewrites identical files."""
    components = {}
    for name, (dataset, files) in COMPONENTS.items():
        src, dst = ArtifactDir.committed(store, dataset, day), version_dir(store, name, version)
        cfg = src.read_json("model_config.json") if "model_config.json" in files else None
        if name == "recsys_ranker" and cfg.get("item_trend"):  # its served day's trend inputs (ml/trend.py)
            files = {**files, RANKER_ITEM_TREND: RANKER_ITEM_TREND}
        hashes = {}
        for src_name, dst_name in files.items():
            data = src.read_bytes(src_name)
            dst.write_bytes(dst_name, data)
            hashes[dst_name] = hashlib.sha256(data).hexdigest()
        info = src.read_json("index.json") if "index.json" in files else None
        store.write_bytes_atomic(repository_path(store, name, "config.pbtxt"), triton_config(name, cfg, info).encode())
        components[name] = {
            "version": version,
            "source": f"{dataset}/dt={day}/v={src.version}",
            "files": sorted(files.values()),
            "sha256": hashes,
        }
    release_dir = version_dir(store, RELEASE_MODEL, version)
    buf = io.BytesIO()
    pq.write_table(item_features, buf)
    release_dir.write_bytes(ITEM_FEATURES, buf.getvalue())
    components[RELEASE_MODEL] = {
        "version": version,
        "source": f"item catalogue of {day}",
        "files": [ITEM_FEATURES],
        "sha256": {ITEM_FEATURES: hashlib.sha256(buf.getvalue()).hexdigest()},
    }
    store.write_bytes_atomic(
        repository_path(store, RELEASE_MODEL, "config.pbtxt"), triton_config(RELEASE_MODEL, None).encode()
    )
    release = {"model_name": RELEASE_MODEL, "version": version, "partition_day": day, "components": components, **extra}
    release_dir.write_json(RELEASE_FILE, release)
    return release


def release_problems(store: DatasetStore, version: int) -> list[str]:
    """Why release `version` cannot be served, empty when it can: release.json missing or unreadable, a component
    or file it lists missing, or a file whose SHA-256 differs from what release.json recorded at export (every file
    a served score depends on: programs, vocabularies, moments, configs, indexes, item tables, item features).
    Promotion, rollback and the serving config check this before anything points traffic at a release."""
    try:
        manifest = version_dir(store, RELEASE_MODEL, version).read_json(RELEASE_FILE)
    except FileNotFoundError:
        return [f"release {version}: {RELEASE_MODEL}/{version}/{RELEASE_FILE} is missing (an incomplete export)"]
    except ValueError as e:
        return [f"release {version}: {RELEASE_MODEL}/{version}/{RELEASE_FILE} is unreadable ({e})"]
    components = manifest.get("components") if isinstance(manifest, dict) else None
    if not isinstance(components, dict):
        return [f"release {version}: {RELEASE_MODEL}/{version}/{RELEASE_FILE} lists no components"]
    expected = {*COMPONENTS, RELEASE_MODEL}
    missing = sorted(expected - components.keys())
    problems = [f"release {version}: component {m} is not in {RELEASE_FILE}" for m in missing]
    for model in sorted(expected & set(components)):
        for name in components[model].get("files") or []:
            try:
                verified_bytes(store, manifest, model, version, name)
            except FileNotFoundError:
                problems.append(f"release {version}: {model}/{version}/{name} is missing")
            except UntrustedReleaseError as e:
                problems.append(str(e))
    return problems


def item_features_table(catalog: ItemCatalog) -> pa.Table:
    """The catalogue in build_item_catalog's input layout (ITEM_CATALOG_COLUMNS), so loading is that function."""
    attrs = catalog.attributes
    return pa.table(
        {
            "item_id": pa.array(catalog.item_ids, pa.string()),
            **{c: pa.array(attrs[c].to_numpy()) for c in ITEM_CATALOG_COLUMNS if c not in ("item_id", "embedding")},
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(catalog.embeddings.reshape(-1), pa.float32()), catalog.embeddings.shape[1]
            ),
        }
    )


@dataclass
class LoadedRelease:
    """A release loaded for scoring: exported programs, vocabularies, index and item features."""

    version: int
    manifest: dict
    ranker: object
    ranker_config: dict
    ranker_vocab: Vocab
    ranker_moments: dict
    query_tower: object
    query_config: dict
    query_vocab: Vocab
    query_moments: dict
    index: object
    index_item_ids: np.ndarray
    catalog: ItemCatalog
    # The ranker's standardized trend inputs [catalogue rows, 2] of the served day, for a ranker that reads them.
    ranker_item_trend: np.ndarray | None = None
    cache: dict = field(default_factory=dict)  # arrays derived from the release by its users (ml/scoring)


class UntrustedReleaseError(ValueError):
    """A release file that does not match the hash its release.json recorded when the platform exported it."""


def verified_bytes(store: DatasetStore, manifest: dict, model: str, version: int, name: str) -> bytes:
    """A component file of a release, only if its SHA-256 equals the one release.json recorded at export.

    The data root is a trust boundary: `torch.export.load` unpickles and FAISS deserialises, so a program or index
    swapped in after export must never be loaded. (Whoever can also rewrite release.json can do anything the
    platform can; the data root's write access is the boundary, docs/reliability.md.)"""
    expected = (manifest.get("components", {}).get(model, {}).get("sha256") or {}).get(name)
    data = version_dir(store, model, version).read_bytes(name)
    if expected is None:
        raise UntrustedReleaseError(
            f"release {version}: release.json records no hash for {model}/{name} (exported "
            "by an older platform version?): re-export the release before serving it"
        )
    if hashlib.sha256(data).hexdigest() != expected:
        raise UntrustedReleaseError(
            f"release {version}: {model}/{version}/{name} differs from what was exported "
            "(hash mismatch): refusing to load it"
        )
    return data


def load_release(store: DatasetStore, version: int) -> LoadedRelease:
    """Every file is read only if its SHA-256 equals what release.json recorded at export (verified_bytes)."""
    from recsys_assets.ml.export import load_program
    from recsys_assets.ml.faiss_index import deserialize

    manifest = version_dir(store, RELEASE_MODEL, version).read_json(RELEASE_FILE)

    def data(model: str, name: str) -> bytes:
        return verified_bytes(store, manifest, model, version, name)

    def table(model: str, name: str) -> pa.Table:
        return pq.read_table(io.BytesIO(data(model, name)))

    def vocab(model: str) -> tuple[Vocab, dict]:
        return Vocab.from_table(table(model, "vocab.parquet")), json.loads(data(model, "feature_moments.json"))

    ranker_vocab, ranker_moments = vocab("recsys_ranker")
    query_vocab, query_moments = vocab("recsys_query_tower")
    ranker_config = json.loads(data("recsys_ranker", "model_config.json"))
    catalog = build_item_catalog([table(RELEASE_MODEL, ITEM_FEATURES)])
    ranker_trend = None
    if ranker_config.get("item_trend"):
        if RANKER_ITEM_TREND not in (manifest["components"]["recsys_ranker"].get("files") or []):
            raise UntrustedReleaseError(
                f"release {version}: its ranker reads item trend inputs but recsys_ranker/{version}/"
                f"{RANKER_ITEM_TREND} is not in {RELEASE_FILE}: re-export the release"
            )
        raw = trend_rows(table("recsys_ranker", RANKER_ITEM_TREND), catalog)
        ranker_trend = ItemTrend.from_dict(ranker_config["item_trend"]).standardized(raw)
    return LoadedRelease(
        version=version,
        manifest=manifest,
        ranker=load_program(data("recsys_ranker", "model.pt2")),
        ranker_config=ranker_config,
        ranker_vocab=ranker_vocab,
        ranker_moments=ranker_moments,
        query_tower=load_program(data("recsys_query_tower", "model.pt2")),
        query_config=json.loads(data("recsys_query_tower", "model_config.json")),
        query_vocab=query_vocab,
        query_moments=query_moments,
        index=deserialize(data("recsys_retrieval_index", "index.faiss")),
        index_item_ids=table("recsys_retrieval_index", "items.parquet")
        .column("item_id")
        .to_numpy(zero_copy_only=False)
        .astype(object),
        catalog=catalog,
        ranker_item_trend=ranker_trend,
    )
