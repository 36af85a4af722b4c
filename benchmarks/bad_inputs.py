"""The README's table of bad inputs: every case of tests/test_bad_inputs.py, run and checked.

    python benchmarks/bad_inputs.py [--cases=train-corrupt-jpeg,report-empty-eval-json]
        [--log=benchmarks/bad_inputs.log]

Builds the battery's inputs once in a temporary folder, runs each case's CLI as the test does
and checks the same promises (`test_bad_inputs.check`). Prints the Markdown table (one row
per case: the CLI, the bad input, the outcome, and the last line of stderr with the temporary
folders written <in> and <out>) and appends it with every case's command, exit status and
stderr tail to --log. The README's reliability section pastes the table; a case added to the
battery fails `test_every_cli_and_every_case_is_covered_and_listed_in_the_readme` until
the table is regenerated.
"""

import contextlib
import os
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402

flags.DEFINE_list("cases", [], "Case ids to run (default: all).")
flags.DEFINE_string("log", "benchmarks/bad_inputs.log", "Log appended to ('': none).")
FLAGS = flags.FLAGS

OUTCOME = {"error": "one error line, exit {code}", "failed_row": "failed row kept, exit {code}",
           "skip": "skipped, named, counted; exit {code}"}


def shown(text, inputs, out):
    """`text` with the temporary folders written <in> and <out>, fit for a table cell."""
    return text.replace(str(out), "<out>").replace(str(inputs.root), "<in>").replace("|", "\\|")


def main(argv):
    logging.set_verbosity(logging.WARNING)  # the TFLite converter's notes while building inputs
    import test_bad_inputs as battery

    from spvit_tf.benchmark import append_log, log_header

    unknown = sorted(set(FLAGS.cases) - set(battery.BY_ID))
    if unknown:
        raise SystemExit(f"error: unknown case(s) {', '.join(unknown)}; the cases are "
                         f"{', '.join(battery.BY_ID)}")
    cases = [battery.BY_ID[c] for c in FLAGS.cases] if FLAGS.cases else battery.CASES
    rows, details = [], []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        inputs = battery.build_inputs(pathlib.Path(tmp) / "in", stack)
        for case in cases:
            out = pathlib.Path(tmp) / "out" / case.id
            out.mkdir(parents=True)
            if case.kind == "read-only output directory" and not inputs.read_only_works:
                rows.append(f"| `{case.id}` | {case.cli} | {case.kind} | not run: no read-only "
                            "folder here | |")
                continue
            start = time.monotonic()
            outcome = battery.run_case(case, inputs, out)
            seconds = time.monotonic() - start
            problems = battery.check(case, outcome, inputs, out)
            verdict = OUTCOME[case.expect].format(code=outcome.returncode)
            if problems:
                verdict = f"**broken**: {'; '.join(problems)}"
            said = battery.last_line(outcome.stderr)
            if case.expect == "skip":  # the run's own last line is no news: show the count
                said = next((line for line in outcome.stderr.splitlines()
                             if line.startswith("epoch ")), said)
            rows.append(f"| `{case.id}` | {case.cli} | {case.kind} | {shown(verdict, inputs, out)} "
                        f"| {shown(said, inputs, out)} |")
            command = " ".join(["python", *case.argv(inputs, out)])
            tail = outcome.stderr.strip().splitlines()[-6:]
            details.append("\n".join([
                f"## {case.id}: {'ok' if not problems else 'BROKEN'} (exit {outcome.returncode}, "
                f"{seconds:.1f} s)", shown(command, inputs, out),
                *(f"    {shown(line, inputs, out)}" for line in tail)]))
            print(f"{case.id}: {'ok' if not problems else 'BROKEN'} ({seconds:.0f} s)",
                  file=sys.stderr)
    table = "\n".join(["| case | CLI | bad input | outcome | stderr ends with |",
                       "|---|---|---|---|---|", *rows])
    print(table)
    if FLAGS.log:
        append_log(REPO / FLAGS.log, [log_header(f"{len(cases)} case(s)"), "", "\n\n".join(details),
                                      "", table])


if __name__ == "__main__":
    app.run(main)
