"""What the user can fix, and how the command line says it.

Every error d2lres raises for a problem the user can fix (a value, a name, a shape, a file, a
folder, a device, a missing framework, a run that cannot go on) is a :class:`UserError`, and it
keeps the builtin base its API documents: a shape error is still a ``ValueError``, a missing
framework an ``ImportError``, so code that catches those keeps working. :func:`report_errors`
prints a ``UserError``, and an ``OSError`` named by its file, as one ``d2lres: error:`` line;
anything else is a bug (in d2lres or a framework) and keeps its traceback.
"""
from __future__ import annotations

import sys


class UserError(Exception):
    """A problem the user can fix; the message says what it is and what to do."""


class UserValueError(UserError, ValueError):
    """A value, name, shape or setting d2lres cannot use."""


class UserTypeError(UserError, TypeError):
    """An argument of the wrong kind (a network d2lres did not build, a flag that is not a bool)."""


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (e.g. the loss is no longer finite). ``d2lres.training.TrainingError``
    (the loop raises it; so does ``d2lres.inputs`` for non-finite BatchNorm statistics)."""


def report_errors(func, *args, stream=None) -> int:
    """``func(*args)``, with every :class:`UserError` and ``OSError`` (unwritable, full disk, a
    folder where a file belongs) as one ``d2lres: error:`` line on ``stream`` (default stderr)
    and exit status 2. Other exceptions propagate, ``BrokenPipeError`` included."""
    try:
        return func(*args)
    except UserError as err:
        message = str(err)
    except BrokenPipeError:  # the reader of the output has gone (``| head``): the caller ends quietly
        raise
    except OSError as err:
        where = err.filename2 if err.filename2 is not None else err.filename  # a rename's target
        message = (f"{where}: {err.strerror or err}; check the path, its permissions and free space"
                   if where else f"{err}")
    print(f"d2lres: error: {message}", file=stream or sys.stderr)
    return 2
