"""User-facing errors. ``cli.py`` turns any ``ColorizerError`` into one line on stderr and exit code 2."""


class ColorizerError(Exception):
    """Base of every error caused by the user's input, files or environment (not a bug)."""


class ArtifactError(ColorizerError):
    """An artifact or its sidecar is missing, unreadable or does not match."""


class BackendUnavailable(ColorizerError):
    """A backend cannot run here (missing package, no GPU); the message says how to install it."""


class OutputError(ColorizerError):
    """The output folder or a run-level output (the fail list, the summary) cannot be written: the run stops."""
