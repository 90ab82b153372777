"""Config files (the datagen, training and serving YAMLs): one strict pydantic base and one loader.

A config error names the file and the key, never a value read from the file: a path pointed at the wrong file
(a secrets file, say) must not copy its contents into an error message, a log line or the Dagster event log.
YAML syntax errors report only the line and column, and no exception from the parser or from pydantic (whose
messages carry the offending input) is chained onto ours.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class StrictModel(BaseModel):
    """Config sections: unknown keys are errors (a typo never silently falls back to a default); immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigFileError(ValueError):
    """An unreadable or invalid config file; the message names the file and the keys, never their values."""


M = TypeVar("M", bound=BaseModel)


def key_path(loc: tuple) -> str:
    """pydantic's error location as a key path: ('filters', 3, 'column') -> 'filters[3].column'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def validation_problems(error: ValidationError) -> str:
    """Every problem as `key: message`. pydantic's `msg` never includes the input; our validators' messages name
    filters and columns of the config schema, not values of the file."""
    return "; ".join(f"{key_path(e['loc'])}: {e['msg']}" for e in error.errors())


def parse_config(raw: object, model: type[M], what: str, source: str, error: type[ConfigFileError]) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise error(f"invalid {what} config {source}: {validation_problems(e)}") from None


def load_config_file(path: str | Path, model: type[M], what: str, error: type[ConfigFileError] = ConfigFileError) -> M:
    """Load and validate a config file; parsed once per content version (path, mtime, size), so an edited file is
    seen by the next run of a long-lived code server without re-parsing on every call."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise error(f"{what} config file not found: {p}") from None
    except OSError as e:
        raise error(f"cannot read {what} config file {p}: {type(e).__name__}") from None
    return _load(str(p), st.st_mtime_ns, st.st_size, model, what, error)


@functools.lru_cache(maxsize=64)
def _load(path: str, _mtime_ns: int, _size: int, model: type[M], what: str, error: type[ConfigFileError]) -> M:
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise error(f"{what} config file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"cannot read {what} config file {p}: {type(e).__name__}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise error(f"{what} config file {p} is not valid YAML{where}") from None
    if not isinstance(raw, dict):
        raise error(f"{what} config file {p} must hold a mapping of keys (it holds a {type(raw).__name__})")
    return parse_config(raw, model, what, str(p), error)
