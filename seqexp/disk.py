"""A full disk while seqexp writes a file it replaces atomically (a checkpoint, the feature cache).

Both writers write a temporary file beside the target and rename it into place, so the
previous file stays whole whatever happens. :func:`guarded_write` adds what a full disk
needs: the partial temporary file is removed (or the disk would stay 100% full), and the
error says "no space left on <folder>" in one line instead of torch's
``RuntimeError: [enforce fail at inline_container.cc:...] . unexpected pos``.

torch's writer does not keep the ``errno``: a path argument gives only that RuntimeError,
an open file an ``OSError`` (ENOSPC) with the RuntimeError as its context. So a failed
write counts as "disk full" when ENOSPC/EDQUOT is anywhere in the exception chain, or when
the folder has (almost) no free space left at the moment of the failure.

No torch here: ``seqexp.run`` imports this module to list the user errors.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from seqexp.errors import DiskFullError  # noqa: F401  (defined with every user error)
from seqexp.training.stopping import uninterrupted

__all__ = ["DiskFullError", "guarded_write", "is_disk_full"]

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# Free bytes below which a failed write is taken for a full disk: a few file-system blocks.
NEARLY_FULL = 1 << 20


def _free(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def is_disk_full(exc: BaseException, folder: Path) -> bool:
    """True when ``exc`` (raised while writing in ``folder``) comes from a full disk."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, OSError) and link.errno in _FULL_ERRNOS:
            return True
        link = link.__cause__ or link.__context__
    if not isinstance(exc, (OSError, RuntimeError)):
        return False
    free = _free(folder)
    return free is not None and free < NEARLY_FULL


@contextmanager
def guarded_write(tmp: Path, target: Path, what: str, fix: str) -> Iterator[None]:
    """Around writing ``tmp`` and renaming it to ``target``: on any failure remove ``tmp``; a full
    disk becomes :class:`DiskFullError` ("no space left on <folder> ... {fix}"). A Ctrl-C or SIGTERM
    is held until the write has ended (``seqexp.training.stopping.uninterrupted``)."""
    tmp = Path(tmp)
    try:
        # Uninterrupted: a SIGTERM or Ctrl-C inside torch.save's writes came out as that RuntimeError ("unexpected
        # pos": 20 of 60 signals timed at random in a checkpoint save), so the run ended FAILED, not KILLED.
        # The write ends first now, and the signal is raised after the rename.
        with uninterrupted():
            yield
    except BaseException as exc:
        full = is_disk_full(exc, tmp.parent)
        with suppress(OSError):
            os.unlink(tmp)
        if not full:
            raise
        kept = f"; the previous {what} {target} is intact" if Path(target).exists() else ""
        free = _free(tmp.parent)
        raise DiskFullError(
            f"no space left on {tmp.parent} while writing the {what} {target.name}"
            f"{f' ({free / 2**20:.1f} MiB free after removing the partial file)' if free is not None else ''}"
            f"{kept}; free some space there or {fix}"
        ) from None
