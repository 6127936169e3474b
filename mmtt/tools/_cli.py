"""Known user errors end a tool with one line and a non-zero exit code, not a traceback."""
import functools
import os
import sys
from typing import Callable, TypeVar

F = TypeVar('F', bound=Callable)


class ToolError(Exception):
    """A problem with what the user asked for (a file, an option), told in one line."""


# mmtt raises ValueError naming the bad key for every bad setting; FileNotFoundError names the
# file. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ToolError, ValueError, FileNotFoundError)


def one_line(err: BaseException) -> str:
    return ' '.join(str(err).split()) or type(err).__name__


def exits_on_user_error(main: F) -> F:
    """Decorate a tool's ``main``: a user error prints ``PROG: error: MESSAGE`` on stderr and
    exits with code 1. ``MMTT_TRACEBACK=1`` in the environment shows the traceback instead."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except USER_ERRORS as err:
            if os.environ.get('MMTT_TRACEBACK'):
                raise
            prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else main.__module__
            raise SystemExit(f'{prog}: error: {one_line(err)}') from None
    return wrapper
