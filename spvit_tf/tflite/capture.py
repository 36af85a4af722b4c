"""Output of TFLite's C++ code, which prints to file descriptor 1 and bypasses `sys.stdout`."""

import contextlib
import os
import sys
import tempfile


@contextlib.contextmanager
def captured_stdout():
    """Captures file descriptor 1 (the Analyzer's report, the quantizer's settings).

    Yields a list that holds the captured text once the block has exited.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 1)
        text = []
        try:
            yield text
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
            capture.seek(0)
            text.append(capture.read().decode("utf-8", "replace"))
