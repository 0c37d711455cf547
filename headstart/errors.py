"""Exceptions raised by headstart; the CLI turns each into a one-line message and exit code 2."""


class HeadstartError(Exception):
    """Base class: a problem the user can fix, reported without a traceback."""

    exit_code = 2


class DatasetError(HeadstartError):
    """The image folder is missing, empty, or not laid out one sub-folder per class."""


class CacheError(HeadstartError):
    """The feature cache cannot be read or written."""


class CacheMismatchError(CacheError):
    """The cache was made with other extraction settings."""


class CacheBusyError(CacheError):
    """Another process has the cache open for writing."""


class BackboneError(HeadstartError):
    """The backbone, layer or weights asked for cannot be built."""


class WeightsDownloadError(BackboneError):
    """Keras could not download the ImageNet weights (offline, proxy, firewall)."""


class DownloadError(HeadstartError):
    """A dataset download failed or its archive is not what was expected."""


class RunError(HeadstartError):
    """A run directory is missing files or was made with other settings."""


class RunBusyError(RunError):
    """Another headstart process is writing the same run folder."""


class HeadError(HeadstartError):
    """The head asked for does not exist, or was given an option it does not take."""


class SplitError(HeadstartError):
    """The split settings are malformed, or leave a split that training needs empty."""


class CacheReadError(CacheError):
    """HDF5 could not read part of the cache: a damaged file, or a live writer's newest strings."""


class ExportError(HeadstartError):
    """A model cannot be exported in the format asked for, or an exported file is not one of ours."""


class RayError(HeadstartError):
    """Ray is missing, the cluster cannot be reached, or it could not run the extraction."""


class ShardError(HeadstartError):
    """The --shards / --shard options are malformed, or a cache is another shard."""


class MergeError(HeadstartError):
    """Caches given to merge do not fit together (settings, classes, paths, shards)."""


class AuditError(HeadstartError):
    """An audit, map or report cannot be made from what it was given (or an input file is malformed)."""


class ExcludeListError(HeadstartError):
    """An --exclude-list file cannot be read as one relative picture path a line."""


class SweepError(HeadstartError):
    """A sweep's search is malformed, or its folder cannot be resumed."""


class DemoError(HeadstartError):
    """The demo cannot run: its bundled weights are missing, or its output folder is not ours."""


class BaselineError(HeadstartError):
    """The baseline cannot be trained with these options or on this folder."""


class SimilarError(HeadstartError):
    """A similarity query that cannot be answered as asked."""


class TextTowerError(HeadstartError):
    """The cache's backbone has no text tower (not a CLIP or SigLIP preset), or its tower cannot be loaded."""


class DecodeError(Exception):
    """A picture that cannot be turned into pixels; ``str()`` is the reason recorded in the cache."""


class Invalid(Exception):
    """One rule a cache breaks; ``str()`` says which, in a few words."""


class UnsafeFileError(HeadstartError):
    """A path named as a file to read is not a regular file (a pipe, a device, a folder) or is too large."""


class ArchiveDamagedError(DownloadError):
    """A zip's bytes are damaged (a CRC, a truncated member) or unsafe to unpack (a zip bomb)."""


class DiskFullError(HeadstartError):
    """The disk filled (or would fill) while writing; what was committed before is kept."""


def first_line(err: BaseException, limit: int) -> str:
    """The first line of ``err``'s message (its type's name when it has none), at most ``limit`` characters:
    what a one-line message quotes of an exception a library raised."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:limit]
