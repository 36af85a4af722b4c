"""The TFLite toolkit: what turns a Keras model into a `.tflite` an app can ship, and checks it.

One module per concept, each with a small public API:

- `convert`: the serving graph (`serving_model`, `serving_inputs`), the converter settings of
  every format (`convert`, `FORMATS`), the calibrated quantization (`quantize_int16x8`), and
  files with several signatures (`convert_signatures`) of a model's twins (`retarget`).
- `budgets`: several token budgets in one file, one signature each (`parse_budgets`).
- `graph`: the flatbuffer reader (`Graph`: ops, tensors, float ops, builtin/integer checks).
- `gpu`: the GPU delegate: the variant it runs whole (`gpu_twin`) and the rule check of which
  ops it would leave to the CPU (`gpu_compatibility`).
- `runner`: the LiteRT interpreter harness on uint8 pixels (`run_tflite`) and the Keras
  reference on the same pixels (`keras_logits`).
- `cards`: the JSON and Markdown model cards and the FPGA op report.
- `metadata`: the TFLite model metadata that app runtimes such as MediaPipe Tasks read.
- `capture`: output of TFLite's C++ code (file descriptor 1).
- `profile`: per-op latency profiles from TFLite's `benchmark_model`, attributed to blocks and
  selectors (pure Python: the adb runner imports it without TensorFlow).

`spvit_tf.export` is the command line that drives them.
"""
