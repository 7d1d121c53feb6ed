"""Content-keyed caching of layer fits: a fit is reused when its model frame, its seed and the
model code are the same.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from flows import __version__

# --------------------------------------------------------------------------------------
# Caching fits on content: the same frame, the same model code and settings -> the same fit.


def frame_fingerprint(frame: pa.Table) -> str:
    """SHA-256 of a model frame's content, independent of row order and chunking.

    SQL gives no row order without ORDER BY, so the rows are sorted on every flat column
    before hashing; the schema (names and types) is part of the hash.
    """
    digest = hashlib.sha256(str(frame.schema).encode())
    if frame.num_rows:
        # nested columns (site value lists) cannot be sort keys; the flat ones identify a row
        keys = [(f.name, "ascending") for f in frame.schema if not pa.types.is_nested(f.type)]
        ordered = frame.take(pc.sort_indices(frame, sort_keys=keys)).combine_chunks()
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, ordered.schema) as writer:
            writer.write_table(ordered)
        digest.update(sink.getvalue())
    return digest.hexdigest()


CHAINED_LAYER = "chained"  # the cache and task name of the model over all layers


@cache
def model_code_version() -> str:
    """Hash of the code that turns a frame into a fit: the analysis layer and the engine."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256(__version__.encode())
    sources = sorted((root / "hglm").rglob("*.py")) + sorted(
        (root / "flows" / "analysis").rglob("*.py")
    )
    for source in sources:
        digest.update(source.relative_to(root).as_posix().encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def fit_cache_key(layer: str, frame: pa.Table, seed: int) -> str:
    return f"fit-{layer}-{frame_fingerprint(frame)[:32]}-seed{seed}-code{model_code_version()}"


def fit_layer_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    return fit_cache_key(parameters["layer"], parameters["frame"], parameters["seed"])


def fit_chained_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    return fit_cache_key(CHAINED_LAYER, parameters["frame"], parameters["seed"])
