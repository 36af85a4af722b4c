"""User-facing errors and the CLI wrapper that turns them into one line and a non-zero exit."""

import codecs
import contextlib
import errno
import os
import sys


class SpvitError(Exception):
    """A problem with the user's input: the message says what is wrong and how to fix it."""


# A user error met inside a TensorFlow graph (a tf.data pipeline meeting an unreadable image)
# can only surface as an op error wrapped in TensorFlow's context; the graph puts its one line
# between these marks (`tf.debugging.Assert` data) and `run_cli` prints that line alone.
GRAPH_ERROR_START, GRAPH_ERROR_END = "<spvit_tf error>", "</spvit_tf error>"


def first_line(error, limit=200):
    """The first non-blank line of an exception's message, whitespace collapsed and cut at
    `limit` characters, or its type name when it has none: the part of a library's error
    (TensorFlow's carry op context on later lines) that fits into one `error:` line."""
    text = getattr(error, "message", None) or getattr(error, "strerror", None) or str(error)
    lines = [line for line in str(text).splitlines() if line.strip()]
    return " ".join(lines[0].split())[:limit] if lines else type(error).__name__


def _graph_error_line(error):
    """The `error:` line an op error carries between the GRAPH_ERROR marks, or None."""
    text = str(error)
    start = text.find(GRAPH_ERROR_START)
    end = text.find(GRAPH_ERROR_END, start)
    if start < 0 or end < 0:
        return None
    line = text[start + len(GRAPH_ERROR_START):end]
    # TensorFlow prints string tensors with C escapes (a non-ASCII path as \xc3\xa9).
    line = codecs.escape_decode(line.encode("utf-8"))[0].decode("utf-8", "replace")
    return "error: " + " ".join(line.split())


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
    """Wraps an absl `main` so that `SpvitError` prints one line and exits with status 2, as
    does an op error carrying a user error from a graph (`GRAPH_ERROR_START`).

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
        except Exception as error:
            line = _graph_error_line(error)
            if line is None:
                raise
            print(line, file=sys.stderr)
            sys.exit(2)

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
