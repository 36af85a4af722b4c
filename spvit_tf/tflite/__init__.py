"""The TFLite toolkit: what turns a converted `.tflite` into a file an app can ship.

`spvit_tf.tflite.metadata` writes (and reads back) the TFLite model metadata that app runtimes
such as MediaPipe Tasks read to feed, normalise and label a classifier. The exporter's other
TFLite pieces (conversion, graph inspection, the GPU delegate rules) move here from
`spvit_tf.export` over time; `spvit_tf.export` stays the command line that drives them.
"""
