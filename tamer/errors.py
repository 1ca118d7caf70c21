"""Errors a user can act on, each with its own exit code.

The CLI prints `error: <message>` on one line and exits with the code; the child exits with the
same code so that the supervisor knows not to retry what a restart cannot fix.
"""

from tamer.protocol import (  # the exit codes are part of the supervisor-child contract; re-exported here
    EXIT_CONFIG,
    EXIT_DATA,
    EXIT_FAILED,
    EXIT_LOCKED,
    EXIT_MODEL,
    EXIT_OK,
    EXIT_STATE,
    EXIT_STOPPED_INT,
    EXIT_STOPPED_TERM,
    EXIT_STORAGE,
    NOT_RETRYABLE_EXIT_CODES,
)

__all__ = [
    "EXIT_CONFIG",
    "EXIT_DATA",
    "EXIT_FAILED",
    "EXIT_LOCKED",
    "EXIT_MODEL",
    "EXIT_OK",
    "EXIT_STATE",
    "EXIT_STORAGE",
    "EXIT_STOPPED_INT",
    "EXIT_STOPPED_TERM",
    "NOT_RETRYABLE_EXIT_CODES",
    "ConfigError",
    "DataError",
    "ERROR_BY_EXIT_CODE",
    "LockedError",
    "ModelError",
    "OutputError",
    "StateError",
    "TamerError",
]


def error_text(error: BaseException) -> str:
    """An exception as one line of text: `TypeName: message`."""
    return f"{type(error).__name__}: {error}".strip()


class TamerError(Exception):
    """An error with a one-line message that says what was wrong and what to do."""

    exit_code = EXIT_FAILED
    kind = "error"


class ConfigError(TamerError):
    exit_code = EXIT_CONFIG
    kind = "config_error"


class DataError(TamerError):
    exit_code = EXIT_DATA
    kind = "data_error"


class ModelError(TamerError):
    exit_code = EXIT_MODEL
    kind = "model_error"


class StateError(TamerError):
    exit_code = EXIT_STATE
    kind = "state_error"


class LockedError(TamerError):
    exit_code = EXIT_LOCKED
    kind = "locked"


class OutputError(TamerError):
    """A file or folder tamer must write cannot be: disk full, file too large, read-only, no permission."""

    exit_code = EXIT_STORAGE
    kind = "output_error"


ERROR_BY_EXIT_CODE = {cls.exit_code: cls for cls in (ConfigError, DataError, ModelError, StateError, OutputError)}
