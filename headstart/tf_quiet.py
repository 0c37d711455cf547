"""Keep TensorFlow's C++ start-up chatter (absl, oneDNN, CUDA probes) off stderr, and keep its real errors.

TensorFlow is imported lazily in many places (the backbones, the Keras heads, export, the baseline).
Rather than route each of those imports through a helper, `install()` puts one import hook in front of
them: the first import of ``tensorflow``, ``keras`` or ``keras_hub`` runs with file descriptor 2
captured to a temporary file, the device probe that prints ``failed call to cuInit`` runs inside the
same window, and afterwards every captured line that is not known start-up noise is written back.
``TF_CPP_MIN_LOG_LEVEL=2`` (unless the user set it) hides the INFO and WARNING lines TensorFlow logs
later. The CLI calls `install()` before every command unless ``-v`` is given; Python users may too.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import io
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator

# Lines TensorFlow and absl print while loading on a machine without problems. An absl log line
# starts with its severity and the date (I0000, W0000, E0000); INFO and WARNING ones are never
# errors, ERROR ones only when they are about probing a GPU that is not there.
NOISE = re.compile(
    r"^(?:[IW]\d{4} "
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags"
    r"|E\d{4} .*(?:cuInit|cuda_platform|Unable to register cu(?:DNN|FFT|BLAS) factory|computation_placer)"
    r")"
)
# Top-level packages whose first import loads TensorFlow's shared libraries.
WATCHED = frozenset({"tensorflow", "keras", "keras_hub", "tf_keras"})

_lock = threading.RLock()
_busy = False


def is_noise(line: str) -> bool:
    """True for a start-up line of TensorFlow or absl that says nothing is wrong."""
    return bool(NOISE.match(line))


def quiet_environment() -> None:
    """Environment settings that TensorFlow reads when it loads (a value the user set wins)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # INFO and WARNING lines after absl is set up
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


@contextlib.contextmanager
def stderr_filtered() -> Iterator[None]:
    """Capture file descriptor 2 while the body runs, then write back the lines that are not noise.

    Python's own ``sys.stderr`` keeps writing to the terminal meanwhile (a progress bar, a log line),
    so only what C and C++ code write to the descriptor is held back.
    """
    try:
        sys.stderr.flush()
        python_on_fd2 = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        python_on_fd2 = False
    saved = os.dup(2)
    python_stderr = sys.stderr
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        if python_on_fd2:
            # Not closed afterwards: a logging handler made during the import may hold on to it, and
            # it writes where stderr went before.
            sys.stderr = io.TextIOWrapper(
                os.fdopen(os.dup(saved), "wb"), line_buffering=True, write_through=True, errors="replace"
            )
        try:
            yield
        finally:
            if python_on_fd2:
                sys.stderr.flush()
                sys.stderr = python_stderr
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().decode(errors="replace").splitlines() if not is_noise(line)]
            if kept:
                os.write(2, ("\n".join(kept) + "\n").encode())


def _probe_devices() -> None:
    """Look for GPUs now, inside the captured window: the CUDA probe logs ``cuInit`` errors on a CPU machine."""
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        with contextlib.suppress(Exception):
            tf.config.list_physical_devices("GPU")


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader's ``exec_module`` inside `stderr_filtered`, then steps aside."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        global _busy
        try:
            with stderr_filtered():
                self.loader.exec_module(module)
                _probe_devices()
        finally:
            module.__loader__ = self.loader
            if module.__spec__ is not None:
                module.__spec__.loader = self.loader
            with _lock:
                _busy = False


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Hands the first import of a `WATCHED` package to `_QuietLoader`."""

    def find_spec(self, fullname, path, target=None):
        global _busy
        if fullname not in WATCHED:
            return None
        with _lock:
            if _busy or "tensorflow" in sys.modules:
                return None
            _busy = True
        spec = None
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        finally:
            if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
                with _lock:
                    _busy = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _QuietLoader(spec.loader)
        return spec


_finder = _QuietFinder()


def install() -> None:
    """Quiet TensorFlow's start-up from now on (no effect once it is loaded, or if called twice)."""
    quiet_environment()
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)


def uninstall() -> None:
    """Remove the import hook (the environment settings stay)."""
    with contextlib.suppress(ValueError):
        sys.meta_path.remove(_finder)
