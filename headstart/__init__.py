"""headstart: a frozen-backbone feature cache with lightweight classification heads."""

from headstart.errors import HeadstartError

__version__ = "0.1.0"


def open_cache(path):
    """Open a feature cache for reading; see `headstart.cache.CacheReader`."""
    from headstart.cache import open_cache as _open

    return _open(path)


def make_config(*args, **kwargs):
    """Check extraction options and resolve defaults; see `headstart.extractor.options.make_config`."""
    from headstart.extractor.options import make_config as _make_config

    return _make_config(*args, **kwargs)


def extract(*args, **kwargs):
    """Extract features of an image folder into a cache; see `headstart.extractor.extract`."""
    from headstart.extractor.runner import extract as _extract

    return _extract(*args, **kwargs)


__all__ = ["HeadstartError", "__version__", "extract", "make_config", "open_cache"]
