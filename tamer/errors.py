"""Errors a user can act on, each with its own exit code.

The CLI prints `error: <message>` on one line and exits with the code; the child exits with the
same code so that the supervisor knows not to retry what a restart cannot fix.
"""

EXIT_OK = 0
EXIT_FAILED = 1  # the run ended `failed` (ladder exhausted, restart budget spent, ...)
EXIT_CONFIG = 2  # bad config, YAML, --set, preset, option value
EXIT_DATA = 3  # missing or malformed data file
EXIT_MODEL = 4  # missing, gated or unloadable model / tokenizer
EXIT_STATE = 5  # unknown run, corrupt or foreign database
EXIT_LOCKED = 6  # another supervisor holds the run
EXIT_STOPPED_INT = 130  # stopped by SIGINT
EXIT_STOPPED_TERM = 143  # stopped by SIGTERM

NOT_RETRYABLE_EXIT_CODES = frozenset({EXIT_CONFIG, EXIT_DATA, EXIT_MODEL, EXIT_STATE})


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


ERROR_BY_EXIT_CODE = {cls.exit_code: cls for cls in (ConfigError, DataError, ModelError, StateError)}
