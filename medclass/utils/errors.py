"""User-facing errors: one clear line, no traceback, non-zero exit (see medclass.utils.cli)."""


class MedclassError(Exception):
    """A mistake in the user's input, config or environment that they can fix.

    The message names the offending file or value and says how to fix it.
    """
