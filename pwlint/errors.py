"""Errors that end in exit code 2 with one line on stderr."""


class PwlintError(Exception):
    """A usage, configuration or load error; its message is shown to the user as is."""


class LoadError(PwlintError):
    """A model file could not be read."""


class ConfigError(PwlintError):
    """A configuration file or flag is invalid."""


class FixNotApplicable(Exception):
    """A fix cannot be carried out on this graph; raised before anything is changed."""


class ModelRefused(FixNotApplicable):
    """The fix backend will not rewrite this model at all (a Keras Lambda layer, a custom
    class): every fix is blocked with this reason, which is not a verification problem."""


class UnsupportedModelError(PwlintError):
    """An object pwlint cannot lint or fix: not a model of a supported kind, or a kind
    with no fix backend (a ``torch.jit.ScriptModule``); the message says what to pass instead."""


class ExportError(LoadError):
    """A live model (a ``torch.nn.Module``, a subclassed ``keras.Model``) could not be
    turned into a file pwlint reads: the message says why, where, and what to do."""
