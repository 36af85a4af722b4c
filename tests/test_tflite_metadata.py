"""TFLite metadata writing on a small converted model: the format runtimes read, round-tripped."""

import importlib

import keras
import numpy as np
import pytest

from spvit_tf.tflite import metadata

LABELS = ("cat", "dog", "ship")
MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


@pytest.fixture(scope="module")
def tflite_model():
    """A float32 [1, 8, 8, 3] -> [1, 3] classifier, converted as the exporter converts."""
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3), batch_size=1)
    x = keras.layers.Conv2D(4, 3)(inputs)
    outputs = keras.layers.Dense(len(LABELS))(keras.layers.GlobalAveragePooling2D()(x))
    converter = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inputs, outputs))
    return converter.convert()


@pytest.fixture
def schema():
    module = metadata.load_schema()
    if module is None:
        pytest.skip(f"{metadata.SCHEMA_MODULE} not installed ({metadata.INSTALL})")
    return module


def spec(normalization=(MEAN, STD), dtype="float32"):
    return metadata.ClassifierMetadata(
        name="tiny_fp32", description="a tiny classifier; 0.0001 GFLOPs", version="0.1.0+test",
        image_size=(8, 8), input_dtype=dtype, normalization=normalization, labels=LABELS,
        input_description="RGB image", output_description="class logits")


def run(content, image):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.set_tensor(inp["index"], image)
    interpreter.invoke()
    return interpreter.get_tensor(out["index"])


def buffer_starts(content):
    """File offsets at which each non-empty model buffer's data starts."""
    from ai_edge_litert import schema_py_generated as tfl

    model = tfl.Model.GetRootAs(content, 0)
    starts = []
    for i in range(model.BuffersLength()):
        table = model.Buffers(i)._tab
        field = table.Offset(4)
        if field and table.VectorLen(field):
            starts.append(table.Vector(field))
    return starts


def test_attached_metadata_reads_back_and_the_model_still_runs(tflite_model, schema):
    content, entry = metadata.attach(tflite_model, spec())
    meta = metadata.read(content)
    assert (meta["name"], meta["version"], meta["min_parser_version"]) == (
        "tiny_fp32", "0.1.0+test", "1.0.0")
    assert "GFLOPs" in meta["description"] and meta["author"] == "spvit_tf"
    (image,), (logits,) = meta["input"], meta["output"]
    assert (image["content"], image["color_space"], image["size"]) == (
        "ImageProperties", "RGB", [8, 8])
    np.testing.assert_allclose(image["normalization"]["mean"], MEAN, rtol=1e-6)
    np.testing.assert_allclose(image["normalization"]["std"], STD, rtol=1e-6)
    np.testing.assert_allclose(image["stats"]["min"], -np.array(MEAN) / STD, rtol=1e-5)
    np.testing.assert_allclose(image["stats"]["max"], (255 - np.array(MEAN)) / STD, rtol=1e-5)
    assert logits["content"] == "FeatureProperties"
    assert logits["associated_files"] == {"labels.txt": "TENSOR_AXIS_LABELS"}
    assert meta["files"] == {"labels.txt": b"cat\ndog\nship\n"}
    assert entry["written"] and entry["min_parser_version"] == "1.0.0"
    assert entry["input"]["normalization"]["mean"] == list(MEAN)
    # the graph is untouched, its buffers keep the schema's 16-byte alignment, and the
    # labels are stored uncompressed for runtimes that read them in place
    image_in = np.random.default_rng(0).normal(size=(1, 8, 8, 3)).astype(np.float32)
    np.testing.assert_array_equal(run(content, image_in), run(tflite_model, image_in))
    assert buffer_starts(content) and all(start % 16 == 0 for start in buffer_starts(content))
    import io
    import zipfile

    (info,) = zipfile.ZipFile(io.BytesIO(content)).infolist()
    assert info.compress_type == zipfile.ZIP_STORED


def test_attaching_again_replaces_the_metadata_and_the_packed_files(tflite_model, schema):
    first, _ = metadata.attach(tflite_model, spec())
    again, _ = metadata.attach(first, spec(normalization=None, dtype="uint8"))
    from ai_edge_litert import schema_py_generated as tfl

    model = tfl.Model.GetRootAs(again, 0)
    names = [model.Metadata(i).Name().decode() for i in range(model.MetadataLength())]
    assert names.count(metadata.METADATA_NAME) == 1
    meta = metadata.read(again)
    assert meta["input"][0]["normalization"] is None
    assert meta["input"][0]["stats"] == {"min": [0.0], "max": [255.0]}
    assert list(meta["files"]) == ["labels.txt"]
    assert metadata.attach(tflite_model, spec())[0] == first  # deterministic bytes


def test_min_parser_version_is_the_newest_schema_version_among_the_fields(schema):
    def version(**file_fields):
        labels = schema.AssociatedFileT()
        labels.name, labels.type = "labels.txt", schema.AssociatedFileType.TENSOR_AXIS_LABELS
        for key, value in file_fields.items():
            setattr(labels, key, value)
        tensor = schema.TensorMetadataT()
        tensor.associatedFiles = [labels]
        subgraph = schema.SubGraphMetadataT()
        subgraph.outputTensorMetadata = [tensor]
        model = schema.ModelMetadataT()
        model.subgraphMetadata = [subgraph]
        return metadata.min_parser_version(model, schema)

    assert version() == "1.0.0"
    assert version(type=schema.AssociatedFileType.VOCABULARY) == "1.0.1"
    assert version(version="2") == "1.4.1"  # AssociatedFile.version came in 1.4.1


def test_without_the_schema_the_file_is_written_as_is_and_the_card_says_why(
        tflite_model, monkeypatch):
    monkeypatch.setattr(metadata, "load_schema", lambda: None)
    content, entry = metadata.attach(tflite_model, spec())
    assert content == tflite_model and entry["written"] is False
    assert "spvit_tf[app]" in entry["reason"]
    assert metadata.card_line(entry).startswith("- TFLite metadata: none (")


def test_the_schema_loads_from_its_file_when_the_mediapipe_package_fails_to_import(
        schema, monkeypatch):
    real_import = importlib.import_module

    def broken(name, *args):
        if name.startswith("mediapipe"):
            raise ImportError("simulated: mediapipe's package init fails")
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", broken)
    metadata.load_schema.cache_clear()
    try:
        loaded = metadata.load_schema()
        assert loaded is not None and loaded is not schema
        assert hasattr(loaded, "ModelMetadataT") and hasattr(loaded, "NormalizationOptionsT")
    finally:
        metadata.load_schema.cache_clear()
