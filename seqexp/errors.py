"""Every error that is the user's to fix, in one place: the CLI prints its message in one line
(exit status 2, or the job recorded FAILED in a sweep) instead of a traceback.

No imports beyond the standard library: ``seqexp.run`` catches these before torch is loaded.
"""

from __future__ import annotations

import errno


class ConfigError(ValueError):
    """A config value is wrong. The message reads "`key`: problem" so users know what to override."""


class StoreError(ConfigError):
    """The tracking store exists but cannot be used (an unfinished migration, another schema)."""


class DataFormatError(ValueError):
    """Bad input data. The message always starts with ``path:line:``."""


class DataFileMissingError(DataFormatError, FileNotFoundError):
    """A data file the config points at does not exist (catchable as either parent)."""


class DataSourceError(RuntimeError):
    """No configured source could provide the dataset; the message says how to point at local files."""


class EncoderUnavailableError(RuntimeError):
    """The configured encoder cannot be obtained here (not cached and no hub, missing package, ...)."""


class TrackingUnavailableError(RuntimeError):
    """The tracking server stayed unreachable; the writes it missed were saved to a local file."""


class DiskFullError(OSError):
    """No space left in a folder seqexp writes to; the message names it and says what to change."""

    def __init__(self, message: str):
        super().__init__(message)
        self.errno = errno.ENOSPC


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed by this run (another encoder, another config)."""


class ReportError(Exception):
    """A problem the user fixes in ``python -m seqexp.report`` (wrong name, wrong store)."""


#: What ``python -m seqexp.run`` reports in one line.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DataFormatError, DataSourceError, EncoderUnavailableError, TrackingUnavailableError,
    DiskFullError, NonFiniteLossError, CheckpointError,
)
