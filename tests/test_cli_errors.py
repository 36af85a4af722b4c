"""Output locations that cannot be created, and file-system errors while writing: one line.

Every CLI that writes checks its output location (`spvit_tf.workdir.check_output_dir` /
`check_output_file`) before it loads a model or data, so a path under a regular file or in a
read-only folder is one `error:` line and a non-zero exit with nothing created (each CLI's
cases are in tests/test_bad_inputs.py); `run_cli` turns a file-system error that slips past
(a full disk) into one line naming the path. Here: the checks and `run_cli` themselves.
"""

import errno
import os

import pytest

from spvit_tf import bench_results, workdir
from spvit_tf.errors import GRAPH_ERROR_END, GRAPH_ERROR_START, SpvitError, first_line, run_cli
from spvit_tf.workdir import atomic_write, check_output_dir, check_output_file, ensure_output_dir


def test_output_checks_name_what_is_in_the_way_and_create_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SpvitError, match=f"--out={blocker}/a/b cannot be created: {blocker} is "
                                         "a regular file; pass a writable directory"):
        check_output_dir(str(blocker / "a" / "b"), "--out")
    with pytest.raises(SpvitError, match=f"cannot be used: {blocker} is a regular file"):
        ensure_output_dir(str(blocker), "--out")
    with pytest.raises(SpvitError, match=f"--output={tmp_path} is a directory"):
        check_output_file(str(tmp_path), "--output")
    with pytest.raises(SpvitError, match=f"cannot be written: {blocker} is a regular file"):
        check_output_file(str(blocker / "t.json"), "--output")
    check_output_dir(str(tmp_path / "new" / "deeper"), "--out")
    check_output_file(str(tmp_path / "new" / "t.json"), "--output")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    assert ensure_output_dir(str(tmp_path / "new" / "deeper"), "--out")
    assert (tmp_path / "new" / "deeper").is_dir()


def test_a_folder_this_process_cannot_write_is_named(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    # Root writes anywhere, so the permission bits alone cannot show this there.
    if os.geteuid() == 0:
        monkeypatch.setattr(workdir.os, "access", lambda path, mode, **_: str(path) != str(locked))
    else:
        locked.chmod(0o555)
    try:
        with pytest.raises(SpvitError, match=f"cannot be created: {locked} is not writable"):
            check_output_dir(str(locked / "sub"), "--output_dir")
        with pytest.raises(SpvitError, match=f"--output_dir={locked} cannot be used"):
            check_output_dir(str(locked), "--output_dir")
        with pytest.raises(SpvitError, match=f"{locked} is not writable"):
            check_output_file(str(locked / "t.json"), "--output")
    finally:
        locked.chmod(0o755)
    assert not any(locked.iterdir())


def _no_space(src, dst):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a failing write has no name


def test_run_cli_turns_a_full_disk_into_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    target = tmp_path / "table.json"
    monkeypatch.setattr(workdir.os, "replace", _no_space)  # os is one module: both writers
    for write in (lambda: atomic_write(str(target), "{}"),
                  lambda: bench_results.write_results(tmp_path, [])):
        with pytest.raises(SystemExit) as exit_:
            run_cli(lambda argv: write())(["cli"])
        assert exit_.value.code == 1
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith("error: ") and "No space left on device" in line
        assert str(tmp_path) in line and ".tmp" not in line
    assert not any(tmp_path.iterdir())  # no temporary file left behind


def test_run_cli_names_the_path_of_a_permission_error_and_keeps_other_tracebacks(capsys):
    def denied(argv):
        raise PermissionError(errno.EACCES, "Permission denied", "/data/out/results.md")

    with pytest.raises(SystemExit) as exit_:
        run_cli(denied)(["cli"])
    assert exit_.value.code == 1
    assert capsys.readouterr().err == (
        "error: /data/out/results.md: Permission denied; check its permissions or pass another "
        "path\n")

    def missing(argv):  # not a write-side error: a bug or an unchecked input keeps its trace
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/x")

    with pytest.raises(FileNotFoundError):
        run_cli(missing)(["cli"])


def test_an_op_error_carrying_a_user_error_is_that_line_alone(capsys):
    """A tf.data pipeline can only raise an op error; the line it marks is all the user sees."""
    def unreadable(argv):
        raise RuntimeError(f"{{function_node x}} assertion failed: [{GRAPH_ERROR_START}/d/caf"
                           f"\\xc3\\xa9.jpg cannot be read{GRAPH_ERROR_END}]\n\t [[{{node y}}]]")

    with pytest.raises(SystemExit) as exit_:
        run_cli(unreadable)(["cli"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: /d/caf\u00e9.jpg cannot be read\n"


def test_first_line_of_an_error():
    assert first_line(ValueError("\n  bad   value \n\t [[node]]")) == "bad value"
    assert first_line(KeyError()) == "KeyError"
    assert first_line(OSError(errno.ENOSPC, "No space left on device")) == "No space left on device"
    assert first_line(ValueError("x" * 500), 160) == "x" * 160
