"""HDF5 files that read other files: every link and dataset of a file checked before headstart reads it.

HDF5 has four ways for one file to make its reader open another: external links, soft links
(a name that resolves elsewhere, e.g. to an external link), external raw storage (a dataset whose
bytes lie in any other file: ``secret.txt``, ``~/.ssh/id_rsa``) and virtual datasets (a dataset
mapped from datasets of other HDF5 files). `problem` walks every link of every group and names
the first of these it finds. A merged cache is the one permitted virtual dataset (its
``/features``), and `headstart.cache.virtual.check_sources` checks its shards.
"""

from __future__ import annotations

import os

import h5py


def problem(f: h5py.File | h5py.Group, allow_virtual: frozenset[str] = frozenset()) -> str | None:
    """What in ``f`` would make a reader open another file, in a few words; None when nothing does.

    ``allow_virtual``: names (without the leading slash) of datasets that may be virtual.
    """

    def visit(name: str, link) -> str | None:
        try:
            return _link_problem(f, name, link, allow_virtual)
        except Exception as err:  # raised inside HDF5's visit callback it would surface as a SystemError
            return f"/{name} cannot be read ({' '.join(str(err).split()) or type(err).__name__})"

    return f.visititems_links(visit)


def _link_problem(f: h5py.Group, name: str, link, allow_virtual: frozenset[str]) -> str | None:
    if isinstance(link, h5py.ExternalLink):
        return f"/{name} is an external link to {link.filename!r:.200}"
    if not isinstance(link, h5py.HardLink):
        return (
            f"/{name} is a soft link to {link.path!r:.200}" if isinstance(link, h5py.SoftLink) else f"/{name} is a link"
        )
    obj = f.get(name)
    if isinstance(obj, h5py.Dataset):
        external = obj.external
        if external:
            return f"/{name} keeps its bytes in another file ({str(external[0][0])!r:.200})"
        if obj.is_virtual and name not in allow_virtual:
            return f"/{name} is a virtual dataset (it reads other files)"
    return None


def file_problem(path: str | os.PathLike) -> str | None:
    """`problem` for a whole HDF5 file on disk (a weights file: nothing in it may be virtual); None
    when it holds no such thing or is not HDF5 at all (its reader then says what it is)."""
    if not h5py.is_hdf5(path):
        return None
    try:
        with h5py.File(path, "r", locking=False) as f:
            return problem(f)
    except OSError as err:
        return f"it cannot be read ({' '.join(str(err).split())})"
