"""Export a day's models and indexes as a Triton-style model repository and load a release back for serving.

Layout under <data_root>/model_repository (Triton's: one directory per model, integer version directories, a
config.pbtxt per model):

    recsys_ranker/config.pbtxt            recsys_ranker/<v>/model.pt2 (+ vocab.parquet, feature_moments.json, model_config.json)
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

import io
import json
import posixpath
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_assets.training.artifacts import COLD_START_INDEX, RANKER_MODEL, RETRIEVAL_INDEX, RETRIEVAL_MODEL, ArtifactDir
from recsys_assets.training.features import ItemCatalog, Vocab
from resources.storage import DatasetStore

REPOSITORY = "model_repository"
RELEASE_MODEL = "recsys_feed"
RELEASE_FILE = "release.json"

# Triton model name -> (source dataset, {source file: file in the version directory})
_MODEL_FILES = {"vocab.parquet": "vocab.parquet", "feature_moments.json": "feature_moments.json",
                "model_config.json": "model_config.json"}
COMPONENTS: dict[str, tuple[str, dict[str, str]]] = {
    "recsys_ranker": (RANKER_MODEL, {"ranker.pt2": "model.pt2", **_MODEL_FILES}),
    "recsys_query_tower": (RETRIEVAL_MODEL, {"query_tower.pt2": "model.pt2", **_MODEL_FILES}),
    "recsys_item_tower": (RETRIEVAL_MODEL, {"item_tower.pt2": "model.pt2", **_MODEL_FILES}),
    "recsys_retrieval_index": (RETRIEVAL_INDEX, {"index.faiss": "index.faiss", "items.parquet": "items.parquet",
                                                 "index.json": "index.json"}),
    "recsys_cold_start_index": (COLD_START_INDEX, {"index.faiss": "index.faiss", "items.parquet": "items.parquet",
                                                   "index.json": "index.json"}),
}


def repository_path(store: DatasetStore, *parts: str) -> str:
    return store.path(REPOSITORY, *parts)


def _tensor(name: str, dtype: str, dims: list[int]) -> str:
    return f'  {{ name: "{name}" data_type: {dtype} dims: [ {", ".join(str(d) for d in dims)} ] }}'


def triton_config(name: str, model_config: dict | None, index_info: dict | None = None) -> str:
    """config.pbtxt text for one component (Triton model-configuration text format)."""
    lines = [f'name: "{name}"']
    if name == RELEASE_MODEL:
        lines += ['platform: "ensemble"', "max_batch_size: 0",
                  "# Retrieval (query tower -> retrieval index) then ranking; release.json pins component versions."]
    elif name in ("recsys_ranker", "recsys_query_tower", "recsys_item_tower"):
        assert model_config is not None
        lines += ['backend: "pytorch"', "max_batch_size: 0", 'default_model_filename: "model.pt2"']
        if name == "recsys_ranker":
            inputs = [_tensor("cat", "TYPE_INT64", [-1, len(model_config["cat_features"])]),
                      _tensor("dense", "TYPE_FP32", [-1, model_config["num_dense"]]),
                      _tensor("content", "TYPE_FP32", [-1, model_config["content_dim"]])]
            outputs = [_tensor("logits", "TYPE_FP32", [-1, len(model_config["tasks"])])]
            params = {"tasks": ",".join(model_config["tasks"]), "cat_features": ",".join(model_config["cat_features"])}
        else:
            tower = model_config["query" if name == "recsys_query_tower" else "item"]
            inputs = [_tensor("cat", "TYPE_INT64", [-1, len(tower["cardinalities"])]),
                      _tensor("dense", "TYPE_FP32", [-1, tower["num_dense"]])]
            if name == "recsys_item_tower":
                inputs.append(_tensor("content", "TYPE_FP32", [-1, tower["content_dim"]]))
            outputs = [_tensor("embedding", "TYPE_FP32", [-1, tower["output_dim"]])]
            params = {"normalized": "true"}
        lines += ["input [", ",\n".join(inputs), "]", "output [", ",\n".join(outputs), "]"]
        lines += [f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items()]
    else:
        info = index_info or {}
        lines += ['backend: "faiss"', "max_batch_size: 0",
                  "input [", _tensor("query", "TYPE_FP32", [-1, int(info.get("dim", -1))]), "]",
                  "output [", _tensor("item_row", "TYPE_INT64", [-1, -1]) + ",", _tensor("score", "TYPE_FP32", [-1, -1]), "]"]
        lines += [f'parameters {{ key: "{k}" value: {{ string_value: "{info[k]}" }} }}'
                  for k in ("type", "metric", "nprobe") if k in info]
    lines.append("version_policy: { latest: { num_versions: 3 } }")
    return "\n".join(lines) + "\n"


def release_fingerprint(source_versions: dict[str, str]) -> str:
    """Identity of a release: the committed versions of its source artifacts (same sources -> same release)."""
    return json.dumps(sorted(source_versions.items()))


def source_versions(store: DatasetStore, day: str) -> dict[str, str]:
    return {ds: store.committed_version(ds, day) for ds in (RANKER_MODEL, RETRIEVAL_MODEL, RETRIEVAL_INDEX, COLD_START_INDEX)}


def export_release(store: DatasetStore, day: str, version: int, item_features: pa.Table, extra: dict) -> dict:
    """Copy the day's committed artifacts into <component>/<version>/, write each config.pbtxt, then the release
    manifest last. Rerunning with the same version rewrites identical files."""
    fs = store.fs
    components = {}
    for name, (dataset, files) in COMPONENTS.items():
        src = ArtifactDir.committed(store, dataset, day)
        vdir = repository_path(store, name, str(version))
        fs.create_dir(vdir, recursive=True)
        for src_name, dst_name in files.items():
            store.write_bytes_atomic(posixpath.join(vdir, dst_name), src.read_bytes(src_name))
        cfg = json.loads(src.read_bytes("model_config.json")) if "model_config.json" in files else None
        info = json.loads(src.read_bytes("index.json")) if "index.json" in files else None
        store.write_bytes_atomic(repository_path(store, name, "config.pbtxt"), triton_config(name, cfg, info).encode())
        components[name] = {"version": version, "source": f"{dataset}/dt={day}/v={src.version}",
                            "files": sorted(files.values())}
    rdir = repository_path(store, RELEASE_MODEL, str(version))
    fs.create_dir(rdir, recursive=True)
    buf = io.BytesIO()
    pq.write_table(item_features, buf)
    store.write_bytes_atomic(posixpath.join(rdir, "item_features.parquet"), buf.getvalue())
    store.write_bytes_atomic(repository_path(store, RELEASE_MODEL, "config.pbtxt"), triton_config(RELEASE_MODEL, None).encode())
    release = {"model_name": RELEASE_MODEL, "version": version, "partition_day": day, "components": components, **extra}
    store.write_json_atomic(posixpath.join(rdir, RELEASE_FILE), release)
    return release


def release_versions(store: DatasetStore) -> list[int]:
    """Complete releases (with release.json) in the repository."""
    import pyarrow.fs as pafs

    base = repository_path(store, RELEASE_MODEL)
    infos = store.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    out = []
    for info in infos:
        name = posixpath.basename(info.path)
        if info.type == pafs.FileType.Directory and name.isdigit() and store.exists(posixpath.join(info.path, RELEASE_FILE)):
            out.append(int(name))
    return sorted(out)


def item_features_table(catalog: ItemCatalog) -> pa.Table:
    attrs = catalog.attributes
    return pa.table({
        "item_id": pa.array(catalog.item_ids, pa.string()),
        **{c: pa.array(attrs[c].to_numpy()) for c in attrs.columns},
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(catalog.embeddings.reshape(-1), pa.float32()),
                                                       catalog.embeddings.shape[1]),
    })


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
    query_vocab: Vocab
    query_moments: dict
    index: object
    index_item_ids: np.ndarray
    catalog: ItemCatalog


def _read(store: DatasetStore, *parts: str) -> bytes:
    with store.fs.open_input_stream(repository_path(store, *parts)) as f:
        return f.read()


def _vocab(store: DatasetStore, name: str, version: int) -> tuple[Vocab, dict]:
    vocab = Vocab.from_table(pq.read_table(io.BytesIO(_read(store, name, str(version), "vocab.parquet"))))
    return vocab, json.loads(_read(store, name, str(version), "feature_moments.json"))


def load_release(store: DatasetStore, version: int) -> LoadedRelease:
    from recsys_assets.indexes.faiss_index import deserialize
    from recsys_assets.training.ranker import load_program

    manifest = json.loads(_read(store, RELEASE_MODEL, str(version), RELEASE_FILE))
    ranker_vocab, ranker_moments = _vocab(store, "recsys_ranker", version)
    query_vocab, query_moments = _vocab(store, "recsys_query_tower", version)
    items = pq.read_table(io.BytesIO(_read(store, "recsys_retrieval_index", str(version), "items.parquet")))
    feats = pq.read_table(io.BytesIO(_read(store, RELEASE_MODEL, str(version), "item_features.parquet"))).to_pandas()
    emb = np.stack(feats["embedding"].to_numpy()).astype(np.float32) if len(feats) else np.zeros((0, 128), np.float32)
    catalog = ItemCatalog(item_ids=feats["item_id"].to_numpy(dtype=object), embeddings=emb,
                          attributes=feats.drop(columns=["item_id", "embedding"]).reset_index(drop=True))
    return LoadedRelease(
        version=version, manifest=manifest,
        ranker=load_program(_read(store, "recsys_ranker", str(version), "model.pt2")),
        ranker_config=json.loads(_read(store, "recsys_ranker", str(version), "model_config.json")),
        ranker_vocab=ranker_vocab, ranker_moments=ranker_moments,
        query_tower=load_program(_read(store, "recsys_query_tower", str(version), "model.pt2")),
        query_vocab=query_vocab, query_moments=query_moments,
        index=deserialize(_read(store, "recsys_retrieval_index", str(version), "index.faiss")),
        index_item_ids=items.column("item_id").to_numpy(zero_copy_only=False).astype(object),
        catalog=catalog,
    )

