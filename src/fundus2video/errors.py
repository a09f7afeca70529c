"""Errors meant for the user: the CLI prints their message as is (no traceback), exit status 2."""


class UserError(ValueError):
    """A problem with the user's input (configuration, data, files), explained in the message."""


class ConfigError(UserError):
    """A configuration problem, naming the key (and the nearest valid key for a typo)."""


class DataError(UserError):
    """The data cannot be used as configured; the message lists what is wrong and where."""


class CaseError(DataError):
    """One case cannot be used; the message names the file and what was expected."""
