"""The on-disk cache of generated code: where it lives ($DLC_CACHE_DIR) and how files in it are trusted.

One directory holds every backend's cache (a subfolder each): $DLC_CACHE_DIR,
else the user's cache directory (~/.cache/dlc, or $XDG_CACHE_HOME/dlc). A
directory that cannot be used (not creatable, a file in its place, read-only,
owned by another user or writable by anyone) is replaced for this process by a
private temporary one, with a one-line warning. Files are written atomically
(a temporary name, then a rename) and a file is used only if its content is
what its name promises (`read_checked`); anything else is regenerated.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import stat
import tempfile
import threading
import warnings
from pathlib import Path

ENV = "DLC_CACHE_DIR"

_lock = threading.Lock()
_usable: dict[Path, Path] = {}     # a requested directory -> the directory used for it
_fallback: Path | None = None


def configured_root() -> Path:
    """The cache root asked for: $DLC_CACHE_DIR, else the user's cache directory."""
    value = os.environ.get(ENV)
    if value:
        return Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "dlc"


def cache_dir(sub: str = "", root: str | os.PathLike | None = None) -> Path:
    """The folder `sub` of the cache root (or of `root`), created and checked; a private temporary one if not usable."""
    asked = Path(root) if root is not None else configured_root()
    path = asked / sub if sub else asked
    with _lock:
        found = _usable.get(path)
        if found is None:
            problem = _problem(asked) or (_problem(path) if sub else None)
            found = _usable[path] = path if problem is None else _fall_back(path, problem)
        return found


def replace_unusable(path: Path, error: OSError) -> Path:
    """A private temporary folder instead of path, which failed at a write (full, turned read-only)."""
    with _lock:
        found = _usable[path] = _fall_back(path, f"{type(error).__name__}: {error}")
        return found


def _fall_back(path: Path, problem: str) -> Path:
    global _fallback
    if _fallback is None:
        _fallback = Path(tempfile.mkdtemp(prefix="dlc-cache-"))   # mode 0700: private to this user
        atexit.register(shutil.rmtree, _fallback, ignore_errors=True)
    found = Path(tempfile.mkdtemp(dir=_fallback))
    warnings.warn(f"dlc: cache directory {str(path)!r} is unusable ({problem}); using {str(found)!r} "
                  f"for this process", RuntimeWarning, stacklevel=4)
    return found


def _problem(path: Path) -> str | None:
    """Why path cannot serve as a cache directory, or None: it is created if missing and written to once."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = path.stat()
        if not stat.S_ISDIR(info.st_mode):
            return "not a directory"
        if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
            return "owned by another user"
        if info.st_mode & stat.S_IWOTH:
            return "writable by every user"
        fd, probe = tempfile.mkstemp(dir=path, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except (OSError, ValueError) as e:   # ValueError: a path with a NUL byte
        return f"{type(e).__name__}: {e}"
    return None


def digest(data: bytes, length: int = 20) -> str:
    """The hex digest generated files are named by."""
    return hashlib.sha256(data).hexdigest()[:length]


def write_atomic(path: Path, data: bytes) -> None:
    """Write data to path through a temporary file in the same folder and a rename: readers never see a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_checked(path: Path, expected_digest: str) -> bytes | None:
    """path's content if it hashes to expected_digest, else None (missing, truncated, edited)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data if digest(data, len(expected_digest)) == expected_digest else None


def ensure_file(path: Path, data: bytes) -> bool:
    """Make path hold exactly data: rewritten (atomically) when missing, truncated or edited; True if written."""
    try:
        same = path.read_bytes() == data
    except OSError:
        same = False
    if not same:
        write_atomic(path, data)
    return not same


def reset() -> None:
    """Forget which directories were found usable (tests change $DLC_CACHE_DIR)."""
    with _lock:
        _usable.clear()
