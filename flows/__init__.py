"""The yieldrank pipeline: ingest fab drops, validate, fit HGLMs per layer, rank, report."""

import os
from importlib.metadata import PackageNotFoundError, version

# The pipeline fits layers on parallel threads (and Dask processes); OpenBLAS threads on top of
# them spin-wait on the engine's small dense blocks: one layer of a 300-lot fab took 16.6 s wall
# with OpenBLAS's default threads against 3.1 s with one. Set before numpy loads; an explicit
# setting in the environment wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

try:
    __version__ = version("yieldrank")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
