"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


class BtuError(Exception):
    """An error caused by the user's input or environment, not by a bug in btu."""

    exit_code = 2


class DataError(BtuError):
    """Bad or missing data: the message names the file, the line (row) and the problem."""

    def __init__(self, source, problem, line=None):
        where = f"{source}" + (f", line {line}" if line is not None else "")
        super().__init__(f"{where}: {problem}")
        self.source, self.line, self.problem = source, line, problem


class ModelError(BtuError):
    """A model that cannot be found, loaded or used as asked."""


class ConfigError(BtuError):
    """An option value that cannot work."""
