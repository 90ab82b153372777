"""Export a day's models and indexes as a Triton-style model repository and load a release back for serving.

Layout under <data_root>/model_repository (Triton's: one directory per model, integer version directories, a
config.pbtxt per model):

    recsys_ranker/config.pbtxt            recsys_ranker/<v>/model.pt2 (+ vocab, moments, model_config.json)
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
import json
import posixpath
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from recsys_assets.core.datasets import COLD_START_INDEX, RANKER_MODEL, RETRIEVAL_INDEX, RETRIEVAL_MODEL
from recsys_assets.core.store_dirs import StoreDir
from recsys_assets.ml.artifacts import ArtifactDir, read_vocab
from recsys_assets.ml.features import ITEM_CATALOG_COLUMNS, ItemCatalog, Vocab, build_item_catalog
from resources.store import DatasetStore

REPOSITORY = "model_repository"
RELEASE_MODEL = "recsys_feed"
RELEASE_FILE = "release.json"

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
                inputs += _history_tensors(model_config["history_len"], model_config["content_dim"])
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
        hashes = {}
        for src_name, dst_name in files.items():
            data = src.read_bytes(src_name)
            dst.write_bytes(dst_name, data)
            hashes[dst_name] = hashlib.sha256(data).hexdigest()
        cfg = src.read_json("model_config.json") if "model_config.json" in files else None
        info = src.read_json("index.json") if "index.json" in files else None
        store.write_bytes_atomic(repository_path(store, name, "config.pbtxt"), triton_config(name, cfg, info).encode())
        components[name] = {
            "version": version,
            "source": f"{dataset}/dt={day}/v={src.version}",
            "files": sorted(files.values()),
            "sha256": hashes,
        }
    release_dir = version_dir(store, RELEASE_MODEL, version)
    release_dir.write_table("item_features.parquet", item_features)
    store.write_bytes_atomic(
        repository_path(store, RELEASE_MODEL, "config.pbtxt"), triton_config(RELEASE_MODEL, None).encode()
    )
    release = {"model_name": RELEASE_MODEL, "version": version, "partition_day": day, "components": components, **extra}
    release_dir.write_json(RELEASE_FILE, release)
    return release


def release_versions(store: DatasetStore) -> list[int]:
    """Complete releases (with release.json) in the repository."""
    import pyarrow.fs as pafs

    base = repository_path(store, RELEASE_MODEL)
    infos = store.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    out = []
    for info in infos:
        name = posixpath.basename(info.path)
        if (
            info.type == pafs.FileType.Directory
            and name.isdigit()
            and store.exists(posixpath.join(info.path, RELEASE_FILE))
        ):
            out.append(int(name))
    return sorted(out)


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


class UntrustedReleaseError(ValueError):
    """A release file that does not match the hash its release.json recorded when the platform exported it."""


def verified_bytes(store: DatasetStore, manifest: dict, model: str, version: int, name: str) -> bytes:
    """A component file of a release, only if its SHA-256 equals the one release.json recorded at export.

    The data root is a trust boundary: `torch.export.load` unpickles and FAISS deserialises, so a program or index
    swapped in after export must never be loaded. (Whoever can also rewrite release.json can do anything the
    platform can; the data root's write access is the boundary, see README "Reliability".)"""
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
    from recsys_assets.ml.export import load_program
    from recsys_assets.ml.faiss_index import deserialize

    ranker, query = version_dir(store, "recsys_ranker", version), version_dir(store, "recsys_query_tower", version)
    index, release = version_dir(store, "recsys_retrieval_index", version), version_dir(store, RELEASE_MODEL, version)
    manifest = release.read_json(RELEASE_FILE)
    ranker_vocab, ranker_moments = read_vocab(ranker)
    query_vocab, query_moments = read_vocab(query)
    return LoadedRelease(
        version=version,
        manifest=manifest,
        ranker=load_program(verified_bytes(store, manifest, "recsys_ranker", version, "model.pt2")),
        ranker_config=ranker.read_json("model_config.json"),
        ranker_vocab=ranker_vocab,
        ranker_moments=ranker_moments,
        query_tower=load_program(verified_bytes(store, manifest, "recsys_query_tower", version, "model.pt2")),
        query_config=query.read_json("model_config.json"),
        query_vocab=query_vocab,
        query_moments=query_moments,
        index=deserialize(verified_bytes(store, manifest, "recsys_retrieval_index", version, "index.faiss")),
        index_item_ids=index.read_table("items.parquet")
        .column("item_id")
        .to_numpy(zero_copy_only=False)
        .astype(object),
        catalog=build_item_catalog([release.read_table("item_features.parquet")]),
    )
