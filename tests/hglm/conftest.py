"""Shared fixtures: the public data sets and the R reference values (read-only)."""

from __future__ import annotations

import os

# Small dense blocks dominate these fits; a multi-threaded OpenBLAS on a shared 2-core box
# makes them ~20x slower. Must be set before numpy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

# The project's read-only shared folder sits beside the checkout (../shared), in CI as here.
DATA = (
    Path(os.environ.get("YIELDRANK_SHARED", Path(__file__).resolve().parents[3] / "shared"))
    / "data"
)


def load_dataset(name: str) -> pd.DataFrame:
    """A data set with R's column types (factors where R had factors)."""
    df = pd.read_csv(DATA / f"{name}.csv")
    if name == "cbpp":
        df["period"] = df["period"].astype(str)
        df["herd"] = df["herd"].astype(str)
    if name == "cake":
        df["temperature"] = pd.Categorical(df["temperature"], ordered=True)
    if name == "pump":
        df["System"] = df["System"].astype(str)
    return df


def load_references() -> list[dict]:
    return json.loads((DATA / "references.json").read_text())


# How each reference model is called through hglm.fit (the data preparation mirrors
# the R call recorded in references.json: response, trials, offset, families).
_RAND = {"gaussian": "normal", "Beta": "beta", "Gamma": "gamma", "inverse.gamma": "inverse_gamma"}


def fit_arguments(ref: dict) -> dict:
    spec = ref["spec"]
    ds = ref["dataset"]
    fixed_rhs = spec["fixed"].split("~", 1)[1].strip()
    random = " + ".join(f"(1|{r['grouping']})" for r in spec["random"])
    response = {"cbpp": "incidence", "seeds": "r"}.get(ds, spec["response"])
    args: dict = {
        "formula": f"{response} ~ {fixed_rhs} + {random}",
        "family": spec["family"].lower(),
        "link": spec["link"],
        "rand_family": {
            r["grouping"]: f"{_RAND[r['distribution']]}({r['link']})" for r in spec["random"]
        },
    }
    if ds == "cbpp":
        args["trials"] = "size"
    if ds == "seeds":
        args["trials"] = "n"
    if spec["offset"] == "log(t)":
        args["offset"] = "np.log(t)"
    if spec["dispersion"].startswith("log(phi) ~"):
        args["disp"] = "~ " + spec["dispersion"].split("~", 1)[1].strip()
    return args


@pytest.fixture(scope="session")
def references() -> list[dict]:
    return load_references()


__all__ = ["fit_arguments", "load_dataset", "load_references", "np"]
