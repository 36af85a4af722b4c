"""Output locations that cannot be created, and file-system errors while writing: one line.

Every CLI that writes checks its output location (`spvit_tf.workdir.check_output_dir` /
`check_output_file`) before it loads a model or data, so a path under a regular file or in a
read-only folder is one `error:` line and a non-zero exit with nothing created; `run_cli`
turns a file-system error that slips past (a full disk) into one line naming the path.
"""

import errno
import os
import subprocess
import sys

import pytest

from conftest import REPO
from spvit_tf import bench_results, workdir
from spvit_tf.errors import SpvitError, run_cli
from spvit_tf.workdir import atomic_write, check_output_dir, check_output_file, ensure_output_dir

MODEL = "deit_tiny_patch16_224"
TINY = ["--model_options=patch_size=8,embed_dim=24,depth=3,num_heads=2", "--image_size=32"]
# module, its flags with BLOCKED (a path under a regular file) and INPUTS (an existing folder),
# and the option the error line must name.
CLIS = {
    "benchmark": ("spvit_tf.benchmark", ["--models=INPUTS/m.tflite", "--output_dir=BLOCKED"],
                  "--output_dir"),
    "export": ("spvit_tf.export", [f"--model={MODEL}", "--output_dir=BLOCKED"], "--output_dir"),
    "visualize": ("spvit_tf.visualize", ["--workdir=INPUTS/run", "--output=BLOCKED/keep.png"],
                  "--output"),
    "train": ("spvit_tf.train", [f"--model={MODEL}", *TINY, "--mode=dense", "--steps=1",
                                 "--workdir=BLOCKED"], "--workdir"),
    "latency_table": ("spvit_tf.latency_table", [f"--model={MODEL}", "--output=BLOCKED/t.json"],
                      "--output"),
}


def tree(folder):
    return sorted((str(p.relative_to(folder)), p.is_file() and p.read_bytes())
                  for p in folder.rglob("*"))


@pytest.mark.parametrize("name", list(CLIS))
def test_output_under_a_regular_file_is_one_line_and_creates_nothing(tmp_path, name):
    module, flags, option = CLIS[name]
    blocker = tmp_path / "results"
    blocker.write_text("a file where a folder was meant to go\n")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "m.tflite").write_bytes(b"")  # never opened: the output check comes first
    flags = [f.replace("BLOCKED", str(blocker / "sub")).replace("INPUTS", str(inputs))
             for f in flags]
    before = tree(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", module, *flags], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300,
    )
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert f"{option}={blocker / 'sub'}" in lines[0]
    assert f"{blocker} is a regular file" in lines[0]
    assert tree(tmp_path) == before


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
