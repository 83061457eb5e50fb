"""The installed package version (``tregpd.__version__``); read from the package metadata on first use."""
try:
    from importlib.metadata import version as _version
    __version__ = _version("tregpd")
except Exception:  # pragma: no cover - running from a source tree without installation
    __version__ = "0.0.0+unknown"
