"""The phone benchmark from a checkout: `python -m spvit_tf.adb_benchmark` with the same flags
(see there and README.md here), looking for benchmark_model next to this script by default.
Needs the package installed (`pip install .` at the checkout's root)."""

import pathlib

from spvit_tf import adb_benchmark

if __name__ == "__main__":
    adb_benchmark.run(binary_dirs=[pathlib.Path(__file__).resolve().parent])
