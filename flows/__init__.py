"""The yieldrank pipeline: ingest fab drops, validate, fit HGLMs per layer, rank, report."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("yieldrank")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
