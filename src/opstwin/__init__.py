"""OpsTwin: an operational digital twin that closes the loop from telemetry to verified action."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("opstwin")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
