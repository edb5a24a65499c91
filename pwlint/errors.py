"""Errors that end in exit code 2 with one line on stderr."""


class PwlintError(Exception):
    """A usage, configuration or load error; its message is shown to the user as is."""


class LoadError(PwlintError):
    """A model file could not be read."""


class ConfigError(PwlintError):
    """A configuration file or flag is invalid."""


class FixNotApplicable(Exception):
    """A fix cannot be carried out on this graph; raised before anything is changed."""
