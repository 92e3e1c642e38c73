"""Errors that the CLI turns into one line on stderr and a distinct exit code.

Exit codes are a public contract (CI gates depend on them):
0 clean · 1 suspicious classes found · 2 usage error · 3 model or tool error.
"""

from __future__ import annotations

EXIT_CLEAN = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_ERROR = 3


class AuditorError(Exception):
    """Base class: a problem the user can act on, reported without a traceback."""

    exit_code = EXIT_ERROR


class UsageError(AuditorError):
    """The command line asks for something that cannot be done (unknown detector, bad option value)."""

    exit_code = EXIT_USAGE


class OptionError(UsageError):
    """A detector option (``--option NAME.KEY=VALUE``) that no detector declares, or a value it cannot take."""


class ModelLoadError(AuditorError):
    """The model file cannot be read, parsed or converted."""


class PickleRefusedError(ModelLoadError):
    """The file needs pickle execution and the user did not pass --trust-pickle."""


class ParityError(ModelLoadError):
    """The converted model disagrees with the reference runtime beyond tolerance."""


class ResourceLimitError(ModelLoadError):
    """The model declares sizes beyond the configured limits (checked before allocating)."""


class DataError(AuditorError):
    """The --data / --labels input cannot be read or does not match the model."""


class DetectorTimeout(Exception):
    """Raised inside a detector when its time budget is spent (caught by the detector base)."""


class DetectorSkip(Exception):
    """Raised inside a detector that finds, once running, that it cannot give a meaningful result on this
    model (the message is the reason a person can act on); the detector base turns it into a skip."""
