"""The one exception type for user mistakes: the CLI prints it as one line and exits non-zero."""


class KdxError(Exception):
    """A problem the user can fix: bad path, bad recipe, unsupported op, missing runtime.

    The message is one line naming what is wrong and how to fix it.
    """
