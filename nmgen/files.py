"""Reading and writing the files of the API (NMMatrix.save / load, nmgen.torch.save / load): a path
that cannot be used, or an OS error on the way, ends in one FileError (an OSError) naming the file
and the cause, a file that is not what it should be in one ShapeError; never a raw
IsADirectoryError, FileNotFoundError or a library's own exception."""
from __future__ import annotations

import contextlib
import os
import tempfile

from .errors import FileError, NMGenError, ShapeError


def why_not_writable(path) -> str | None:
    """Why a file cannot be written at `path` (None when it looks writable): a directory, a missing
    or non-directory parent, a parent or file without write permission."""
    path = os.fspath(path)
    if not path:
        return "the file name is empty"
    if os.path.isdir(path):
        return "it is a directory; give a file name"
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.exists(parent) and not os.path.isdir(parent):
        return f"{parent} is not a directory"
    if not os.path.isdir(parent):
        return f"the directory {parent} does not exist; create it first"
    if not os.access(parent, os.W_OK | os.X_OK) and not os.path.exists(path):
        return f"no permission to create files in {parent}"
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return "it is read-only"
    return None


def why_not_readable(path) -> str | None:
    """Why `path` cannot be read as a file (None when it looks readable)."""
    path = os.fspath(path)
    if not path:
        return "the file name is empty"
    if not os.path.exists(path):
        return "No such file or directory"
    if os.path.isdir(path):
        return "it is a directory; give a file"
    return None


def file_name(path, verb: str) -> None:
    """ShapeError unless `path` is a file name (str or os.PathLike): nmgen opens the file itself, so an
    open file object (or a descriptor number) is refused with what to pass instead."""
    if not isinstance(path, (str, os.PathLike)):
        name = getattr(path, "name", None)
        raise ShapeError(f"nmgen {verb}s files by name: pass a str or pathlib.Path, not {type(path).__name__}"
                         + (f" (for an open file, its name: {name!r})" if isinstance(name, str) else ""))


def _shown(path) -> str:
    return os.fspath(path) or "''"


def _cause(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


@contextlib.contextmanager
def writing(path, errors: tuple = (), overwrite: bool = True):
    """A block that writes `path`: the path is checked first (an existing file refused unless
    `overwrite`: nothing a user has is replaced without asking), and OSError (or one of `errors`, a
    library's own exceptions) inside it becomes FileError("cannot write PATH: cause")."""
    file_name(path, "write")
    why = why_not_writable(path)
    if why:
        raise FileError(f"cannot write {_shown(path)}: {why}")
    if not overwrite and os.path.isfile(path):
        raise FileError(f"{_shown(path)} already exists; pass overwrite=True to replace it, or give another file")
    try:
        yield
    except NMGenError:
        raise
    except (OSError, *errors) as e:
        raise FileError(f"cannot write {_shown(path)}: {_cause(e)}") from None


@contextlib.contextmanager
def reading(path, what: str, errors: tuple = ()):
    """A block that reads `path`, a file of `what` kind ("a file written by nmgen.torch.save"): the
    path is checked first, OSError inside becomes FileError("cannot read PATH: cause") and one of
    `errors` (the library's exceptions for a malformed file) ShapeError("PATH is not WHAT: cause")."""
    file_name(path, "read")
    why = why_not_readable(path)
    if why:
        raise FileError(f"cannot read {_shown(path)}: {why}")
    try:
        yield
    except NMGenError:
        raise
    except OSError as e:
        raise FileError(f"cannot read {_shown(path)}: {_cause(e)}") from None
    except errors as e:
        raise ShapeError(f"{_shown(path)} is not {what} ({_cause(e)})") from None


@contextlib.contextmanager
def new_version(target: str):
    """A temporary path beside the regular file (or no file) `target` to write its new version to:
    when the block ends without error it is renamed over `target` with `target`'s permissions (a
    new file: the umask's), so a failed or interrupted write leaves `target` as it was and no
    partial file; on error it is removed. The caller writes devices and pipes (/dev/null) in
    place instead: renaming over one would replace the device."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target) or ".", prefix=f".{os.path.basename(target)}.",
                               suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _mode_for(target))       # mkstemp's, and some writers' own files, are owner-only
        os.replace(tmp, target)
        tmp = None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def is_device(target: str) -> bool:
    """Whether `target` exists and is not a regular file (a device, a pipe, a terminal)."""
    return os.path.exists(target) and not os.path.isfile(target)


def _mode_for(target: str) -> int:
    """The permissions `target` has, or a new file would get."""
    try:
        return os.stat(target).st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask
