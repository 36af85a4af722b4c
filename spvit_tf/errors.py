"""User-facing errors and the CLI wrapper that turns them into one line and a non-zero exit."""

import contextlib
import errno
import os
import sys


class SpvitError(Exception):
    """A problem with the user's input: the message says what is wrong and how to fix it."""


# File-system errors a CLI meets where it reads or writes, not in its own code: what to do.
_OS_FIXES = {
    errno.ENOSPC: "free some space there or write elsewhere",
    errno.EDQUOT: "free some space there or write elsewhere",
    errno.EACCES: "check its permissions or pass another path",
    errno.EPERM: "check its permissions or pass another path",
    errno.EROFS: "its file system is read-only; pass another path",
    errno.ENOTDIR: "a part of it is a file, not a folder; pass another path",
    errno.EEXIST: "something is in the way there; remove it or pass another path",
    errno.EISDIR: "it is a folder; pass a file path",
}


def _os_error_line(error):
    """The one `error:` line for an OSError of `_OS_FIXES`, naming its path, or None.

    The atomic writers (`workdir.atomic_write`, `bench_results.write_results`) name the file
    they were writing, so a full disk reads as that file, not as a temporary name."""
    fix = _OS_FIXES.get(error.errno)
    path = error.filename2 or error.filename
    if fix is None or (path is None and error.errno not in (errno.ENOSPC, errno.EDQUOT)):
        return None
    where = f"{path}: " if path is not None else ""
    return f"error: {where}{error.strerror}; {fix}"


def run_cli(main):
    """Wraps an absl `main` so that `SpvitError` prints one line and exits with status 2.

    As a safety net for a location the CLI's own checks did not catch (a disk that fills
    up, permissions changed mid-run), an OSError of `_OS_FIXES` is one line naming the path
    and exit status 1; any other exception keeps its traceback, which a bug needs."""

    def wrapped(argv):
        try:
            return main(argv)
        except SpvitError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        except OSError as error:
            line = _os_error_line(error)
            if line is None:
                raise
            print(line, file=sys.stderr)
            sys.exit(1)

    return wrapped


def parse_flags(argv):
    """absl's flag parsing for `app.run(..., flags_parser=parse_flags)`: a flag error (unknown
    flag, bad value, missing flagfile) is one `error:` line and exit status 2, like `run_cli`."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        message = " ".join(str(error).removeprefix("ERROR:: ").split())
        print(f"error: {message} (--helpfull lists the flags)", file=sys.stderr)
        sys.exit(2)


@contextlib.contextmanager
def stderr_silenced():
    """Mutes file descriptor 2: TensorFlow's C++ start-up logging ignores TF_CPP_MIN_LOG_LEVEL
    and would bury the CLI's one-line errors under its banner."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
