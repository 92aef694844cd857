"""The one exception type users see: a one-line message saying what was wrong, where, and what to do."""


class FeedlearnError(Exception):
    """A user-facing error; the CLI prints its message without a traceback."""


class DataError(FeedlearnError):
    """A data file is malformed: the message names the file, the line and the field."""


class ConfigError(FeedlearnError):
    """A recipe or override is invalid: the message names the key path and suggests a fix."""


class BackendError(FeedlearnError):
    """A generation backend failed for good (retries exhausted, bad reply, missing credentials)."""
