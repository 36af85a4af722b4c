"""TFLite model metadata of an exported image classifier, in the form app runtimes read.

MediaPipe Tasks' ImageClassifier (like the other readers of the TFLite metadata format: the
LiteRT support library, Android Studio's model binding) takes from the file itself what it
needs to run a classifier: the model's name, description and version; the input image's
colour space, size and value range, and for a float input the mean/std to normalise pixels
with; and the class names of the output, packed in the file. The format (the TFLite metadata
schema, `metadata_schema.fbs`, file identifier "M001"):

- a `ModelMetadata` flatbuffer stored as one of the model's buffers and named by the entry
  "TFLITE_METADATA" of the model's `metadata` list;
- the files it names (`AssociatedFile`), appended to the model flatbuffer as a zip archive:
  the TFLite runtime ignores bytes after the flatbuffer, and readers find the archive by its
  central directory at the end of the file. The files are stored uncompressed, so a runtime
  reads them in place from a memory-mapped model.

`NormalizationOptions` (which a runtime applies to RGB pixels 0-255 before feeding a float
input) are written for float inputs only: the normalised-image input (`--io=float`) gets the
model's per-channel mean/std, the float-pixels input (`--io=pixels`, normalisation inside the
graph) the identity, mean 0 and std 1, because MediaPipe requires normalisation options for a
float input and applies only one mean/std to all channels. Integer inputs (the bytes,
normalised inside the graph) get none, and runtimes feed them the bytes as they are.
`min_parser_version` is the newest schema version among the fields written.

The writer uses the schema's generated Python classes that MediaPipe ships
(`mediapipe.tasks.metadata.metadata_schema_py_generated`) and `flatbuffers`: tflite-support's
writer needs protobuf<4, which does not install beside this TensorFlow, and MediaPipe's own
writer needs C++ modules its wheel lacks. The classes are looked up lazily, so exporting works
without MediaPipe; the files are then written without metadata and their cards say so.
"""

import dataclasses
import functools
import importlib
import importlib.util
import io
import os
import zipfile

import numpy as np

from spvit_tf.errors import SpvitError

METADATA_NAME = "TFLITE_METADATA"  # the model's metadata entry the readers look up
METADATA_IDENTIFIER = b"M001"
TFLITE_IDENTIFIER = b"TFL3"
SCHEMA_MODULE = "mediapipe.tasks.metadata.metadata_schema_py_generated"
LABELS_FILE = "labels.txt"
BUFFER_ALIGNMENT = 16  # the TFLite schema's force_align on buffer data
INSTALL = "pip install 'spvit_tf[app]'"
MISSING = (f"TFLite metadata not written: the metadata schema classes ({SCHEMA_MODULE}) are "
           f"not installed; {INSTALL} adds them")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so the same export gives the same bytes


@functools.cache
def load_schema():
    """The metadata schema's generated classes (a module), or None without MediaPipe.

    Imported with importlib because MediaPipe's package `__init__` rebinds `mediapipe.tasks`
    to `mediapipe.tasks.python`, which breaks `import mediapipe.tasks.metadata.x as y`. When
    the package itself fails to import, the generated module is loaded from its file: it
    needs nothing but `flatbuffers`.
    """
    try:
        return importlib.import_module(SCHEMA_MODULE)
    except Exception:  # not installed, or the package's own imports fail
        pass
    try:
        spec = importlib.util.find_spec("mediapipe")  # locates the package without running it
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(root, *SCHEMA_MODULE.split(".")[1:]) + ".py"
        if os.path.isfile(path):
            file_spec = importlib.util.spec_from_file_location("_spvit_metadata_schema", path)
            module = importlib.util.module_from_spec(file_spec)
            try:
                file_spec.loader.exec_module(module)
            except Exception:
                return None
            return module
    return None


@dataclasses.dataclass(frozen=True)
class ClassifierMetadata:
    """What the metadata of one exported image classifier says.

    `input_dtype`: the input tensor's type (uint8, int8, float32); `normalization`: None, or
    the (mean, std) tuples (one value for all channels, or one per channel, on the 0-255
    scale) a runtime applies to RGB pixels before feeding them, for float inputs only;
    `labels`: class names in output order, packed as `labels.txt`.
    """

    name: str
    description: str
    version: str
    image_size: tuple
    input_dtype: str
    normalization: tuple | None
    labels: tuple
    input_description: str
    output_description: str
    author: str = "spvit_tf"


@functools.lru_cache(maxsize=8)
def _digest(path, size, mtime):
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def _weights_digest(path):
    """First 12 hex digits of the file's SHA-256, read once per export of several formats."""
    stat = os.stat(path)
    return _digest(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


def describe_pruning(pruning, tokens_per_block):
    """The pruning schedule in words, for the metadata's description."""
    if not pruning:
        return "dense (no token pruning)"
    return (f"{pruning['method']} token pruning before blocks {list(pruning['locations'])} "
            f"keeping {list(pruning['keep_ratios'])} of the patch tokens (tokens per block "
            f"{list(tokens_per_block)})")


def for_export(*, stem, fmt, source, model, graph_name, input_tensor, output_tensor,
               normalized_input, feed, class_names, signatures=None):
    """The `ClassifierMetadata` of one exported file.

    Name: the file's stem; description: model, pruning schedule, GFLOPs, format and how to
    feed it; version: the package version and a digest of the exported weights, so two
    exports of different weights never share a version. `source`: what was exported
    (`model_name`, `weights` and the `preprocessor`, whose normalisation a float input that
    takes the normalised image declares); `normalized_input`: the float input is the
    normalised image (else a float input holds the pixels 0-255). `signatures`: {key: keep
    ratios} of a file with one signature per token budget, in subgraph order; `model` is
    subgraph 0's.
    """
    import spvit_tf
    from spvit_tf.flops import model_cost

    cost = model_cost(model)
    pruning = model.get_config().get("pruning")
    normalization = None
    if input_tensor["dtype"] == "float32":
        preprocessor = source.preprocessor
        normalization = ((tuple(float(v) for v in preprocessor.pixel_mean),
                          tuple(float(v) for v in preprocessor.pixel_std))
                         if normalized_input else ((0.0,), (1.0,)))
    version = spvit_tf.__version__
    if source.weights and os.path.isfile(source.weights):
        version += f"+weights.{_weights_digest(source.weights)}"
    quantized = output_tensor["scale"] is not None
    description = (
        f"{source.model_name} ({type(model).family}) image classifier for {len(class_names)} "
        f"classes, exported by spvit_tf as {fmt} (graph: {graph_name}). Pruning schedule: "
        f"{describe_pruning(pruning, cost.tokens_per_block)}. {cost.gflops:.4f} GFLOPs per "
        f"image. Input: {feed}. Output: class logits, softmax not applied.")
    if signatures:
        description += (" Signatures, one per token budget, sharing the weights: " + "; ".join(
            f"{key} keeps {list(ratios)}" for key, ratios in signatures.items())
            + f"; subgraph 0 (no signature asked) is {next(iter(signatures))}.")
    return ClassifierMetadata(
        name=f"{stem}_{fmt}", description=description, version=version,
        image_size=tuple(int(s) for s in input_tensor["shape"][1:3]),
        input_dtype=input_tensor["dtype"], normalization=normalization,
        labels=tuple(class_names),
        input_description=f"RGB image, NHWC {list(input_tensor['shape'])} "
        f"{input_tensor['dtype']}: {feed}",
        output_description="class logits (softmax not applied), one per line of "
        f"{LABELS_FILE}" + (", quantized: real = scale * (q - zero_point)" if quantized else ""))


# ---- writing ----


def min_parser_version(metadata, schema):
    """The newest schema version among the fields `metadata` populates (the schema's History:
    the fields and enum values added after 1.0.0)."""
    m = schema
    needed = [(1, 0, 0)]
    files = list(metadata.associatedFiles or [])
    for sub in metadata.subgraphMetadata or []:
        files += sub.associatedFiles or []
        if sub.inputProcessUnits or sub.outputProcessUnits:
            needed.append((1, 1, 0))
        if sub.inputTensorGroups or sub.outputTensorGroups:
            needed.append((1, 2, 0))
        if sub.customMetadata:
            needed.append((1, 5, 0))
        units = list(sub.inputProcessUnits or []) + list(sub.outputProcessUnits or [])
        for tensor in list(sub.inputTensorMetadata or []) + list(sub.outputTensorMetadata or []):
            files += tensor.associatedFiles or []
            units += tensor.processUnits or []
            if tensor.content and tensor.content.contentPropertiesType == \
                    m.ContentProperties.AudioProperties:
                needed.append((1, 3, 0))
        added = {m.ProcessUnitOptions.BertTokenizerOptions: (1, 1, 0),
                 m.ProcessUnitOptions.SentencePieceTokenizerOptions: (1, 1, 0),
                 m.ProcessUnitOptions.RegexTokenizerOptions: (1, 2, 1)}
        needed += [added.get(unit.optionsType, (1, 0, 0)) for unit in units]
    for f in files:
        if f.version:
            needed.append((1, 4, 1))
        needed.append({m.AssociatedFileType.VOCABULARY: (1, 0, 1),
                       m.AssociatedFileType.SCANN_INDEX_FILE: (1, 4, 0)}.get(f.type, (1, 0, 0)))
    return ".".join(map(str, max(needed)))


def metadata_buffer(spec, schema):
    """The `ModelMetadata` flatbuffer (identifier M001) of `spec`."""
    import flatbuffers

    m = schema
    size = m.ImageSizeT()
    size.height, size.width = spec.image_size
    image = m.ImagePropertiesT()
    image.colorSpace, image.defaultSize = m.ColorSpaceType.RGB, size
    tensor_in = m.TensorMetadataT()
    tensor_in.name, tensor_in.description = "image", spec.input_description
    tensor_in.content = m.ContentT()
    tensor_in.content.contentPropertiesType = m.ContentProperties.ImageProperties
    tensor_in.content.contentProperties = image
    tensor_in.stats = m.StatsT()
    if spec.normalization:
        normalization = m.NormalizationOptionsT()
        normalization.mean, normalization.std = map(list, spec.normalization)
        unit = m.ProcessUnitT()
        unit.optionsType, unit.options = m.ProcessUnitOptions.NormalizationOptions, normalization
        tensor_in.processUnits = [unit]
        mean, std = map(np.asarray, spec.normalization)
        tensor_in.stats.min = ((0.0 - mean) / std).tolist()
        tensor_in.stats.max = ((255.0 - mean) / std).tolist()
    else:
        info = np.iinfo(np.dtype(spec.input_dtype))
        tensor_in.stats.min, tensor_in.stats.max = [float(info.min)], [float(info.max)]

    labels = m.AssociatedFileT()
    labels.name, labels.type = LABELS_FILE, m.AssociatedFileType.TENSOR_AXIS_LABELS
    labels.description = "class names, one per line, in the order of the output's scores"
    tensor_out = m.TensorMetadataT()
    tensor_out.name, tensor_out.description = "logits", spec.output_description
    tensor_out.content = m.ContentT()
    tensor_out.content.contentPropertiesType = m.ContentProperties.FeatureProperties
    tensor_out.content.contentProperties = m.FeaturePropertiesT()
    tensor_out.associatedFiles = [labels]

    subgraph = m.SubGraphMetadataT()
    subgraph.name = "image_classifier"
    subgraph.inputTensorMetadata, subgraph.outputTensorMetadata = [tensor_in], [tensor_out]
    model = m.ModelMetadataT()
    model.name, model.description, model.version = spec.name, spec.description, spec.version
    model.author, model.subgraphMetadata = spec.author, [subgraph]
    model.minParserVersion = min_parser_version(model, m)
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), METADATA_IDENTIFIER)
    return bytes(builder.Output())


@functools.cache
def _aligned_buffer_type():
    from ai_edge_litert import schema_py_generated as tfl

    class AlignedBuffer(tfl.BufferT):
        """A model buffer whose data starts on a 16-byte boundary of the file.

        The generated `BufferT.Pack` ignores the schema's `force_align: 16`; the converter's
        own writer honours it, and so does this one, so weights keep the alignment that
        kernels and memory-mapped loading expect.
        """

        def Pack(self, builder):
            data = None
            if self.data is not None and len(self.data):
                payload = np.asarray(self.data, np.uint8).tobytes()
                builder.StartVector(1, len(payload), BUFFER_ALIGNMENT)
                builder.head -= len(payload)
                builder.Bytes[builder.head:builder.head + len(payload)] = payload
                data = builder.EndVector()
            tfl.BufferStart(builder)
            if data is not None:
                tfl.BufferAddData(builder, data)
            tfl.BufferAddOffset(builder, self.offset)
            tfl.BufferAddSize(builder, self.size)
            return tfl.BufferEnd(builder)

    return AlignedBuffer


def with_metadata_buffer(content, data, name=METADATA_NAME):
    """The model flatbuffer of `content` with `data` as the buffer of metadata entry `name`
    (replacing one of that name); anything after the flatbuffer is dropped."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as tfl
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    entries = []
    for entry in model.metadata or []:
        entry_name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
        if entry_name == name:
            model.buffers[entry.buffer].data = None  # its old bytes go with it
        else:
            entries.append(entry)
    aligned = _aligned_buffer_type()
    buffers = []
    for buffer in model.buffers:
        copy = aligned()
        copy.data, copy.offset, copy.size = buffer.data, buffer.offset, buffer.size
        buffers.append(copy)
    buffers.append(aligned())
    buffers[-1].data = np.frombuffer(data, np.uint8)
    entry = tfl.MetadataT()
    entry.name, entry.buffer = name, len(buffers) - 1
    model.buffers, model.metadata = buffers, entries + [entry]
    builder = flatbuffers.Builder(len(content) + len(data) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_IDENTIFIER)
    return bytes(builder.Output())


def append_files(content, files):
    """`content` followed by a zip archive of `files` ({name: bytes or str}), stored
    uncompressed with a fixed date."""
    out = io.BytesIO(content)
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=_ZIP_DATE),
                             data.encode() if isinstance(data, str) else data)
    return out.getvalue()


def attach(content, spec):
    """(`content` with `spec`'s metadata and `labels.txt` packed, the card's "metadata" entry).

    Without the schema classes the content comes back unchanged, with an entry saying why.
    """
    schema = load_schema()
    if schema is None:
        return content, {"written": False, "reason": MISSING}
    data = metadata_buffer(spec, schema)
    packed = append_files(with_metadata_buffer(content, data),
                          {LABELS_FILE: "\n".join(spec.labels) + "\n"})
    return packed, {
        "written": True,
        "schema": "TFLite metadata (metadata_schema.fbs, identifier M001) in the "
        f"{METADATA_NAME} buffer; associated files zipped after the model",
        "min_parser_version": schema.ModelMetadata.GetRootAs(data, 0).MinParserVersion().decode(),
        "name": spec.name,
        "version": spec.version,
        "input": {"dtype": spec.input_dtype, "color_space": "RGB", "size": list(spec.image_size),
                  "normalization": None if spec.normalization is None else
                  dict(zip(("mean", "std"), map(list, spec.normalization)))},
        "associated_files": {LABELS_FILE: "TENSOR_AXIS_LABELS of the output"},
    }


def card_line(entry):
    """The Markdown card's line about the metadata entry `attach` returned."""
    if not entry or not entry.get("written"):
        return f"- TFLite metadata: none ({(entry or {}).get('reason', 'not recorded')})"
    normalization = entry["input"]["normalization"]
    if normalization is None:
        feed = "no normalisation for the runtime to apply (it is inside the graph)"
        if entry["input"]["dtype"] not in ("uint8", "float32"):
            feed += ("; MediaPipe Tasks takes uint8 or float32 inputs, not "
                     f"{entry['input']['dtype']}")
    elif normalization == {"mean": [0.0], "std": [1.0]}:
        feed = ("mean 0 and std 1: the runtime feeds the RGB pixels 0-255 as float (the "
                "normalisation is inside the graph)")
    elif len(set(normalization["mean"])) == len(set(normalization["std"])) == 1:
        feed = (f"the runtime normalises RGB 0-255 pixels with mean {normalization['mean'][0]:g} "
                f"and std {normalization['std'][0]:g}")
    else:  # MediaPipe Tasks' image preprocessing takes one mean/std for all channels
        feed = ("per-channel normalisation of RGB 0-255 pixels with mean "
                f"{[round(v, 3) for v in normalization['mean']]} and std "
                f"{[round(v, 3) for v in normalization['std']]} (MediaPipe Tasks rejects "
                "per-channel values; export --io=pixels for it)")
    return (f"- TFLite metadata (min parser {entry['min_parser_version']}): name, description, "
            f"version {entry['version']}; input RGB {entry['input']['size'][0]}x"
            f"{entry['input']['size'][1]}, {feed}; {LABELS_FILE} packed as the output's labels "
            "(a runtime's classifier returns category names)")


# ---- reading ----


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value


def packed_files(content):
    """{name: bytes} of the zip archive appended to a `.tflite` ({} when there is none)."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            return {name: archive.read(name) for name in archive.namelist()}
    except zipfile.BadZipFile:
        return {}


def metadata_bytes(content, name=METADATA_NAME):
    """The buffer of metadata entry `name` of a `.tflite`, or None."""
    from ai_edge_litert import schema_py_generated as tfl

    model = tfl.Model.GetRootAs(content, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if _text(entry.Name()) == name:
            return model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    return None


def read(content):
    """The TFLite metadata of a `.tflite` as plain values, or None when it has none.

    {"name", "description", "version", "author", "min_parser_version", "input", "output",
    "files"}: per tensor its name, description, content type, normalisation (mean/std or
    None), stats and associated files ({name: type name}); "files": the packed files.
    """
    data = metadata_bytes(content)
    if data is None:
        return None
    schema = load_schema()
    if schema is None:
        raise SpvitError(f"cannot read TFLite metadata: {SCHEMA_MODULE} is missing; {INSTALL}")
    if not schema.ModelMetadata.ModelMetadataBufferHasIdentifier(data, 0):
        raise SpvitError(f"the {METADATA_NAME} buffer is not a metadata flatbuffer (M001)")
    meta = schema.ModelMetadataT.InitFromObj(schema.ModelMetadata.GetRootAs(data, 0))
    def names(enum):
        return {v: k for k, v in vars(enum).items() if not k.startswith("_")}

    content_names, file_types = names(schema.ContentProperties), names(schema.AssociatedFileType)

    def tensor(t):
        normalization = next((u.options for u in t.processUnits or []
                              if u.optionsType == schema.ProcessUnitOptions.NormalizationOptions),
                             None)
        properties = t.content.contentProperties if t.content else None
        return {
            "name": _text(t.name), "description": _text(t.description),
            "content": content_names[t.content.contentPropertiesType] if t.content else None,
            "color_space": names(schema.ColorSpaceType)[properties.colorSpace]
            if isinstance(properties, schema.ImagePropertiesT) else None,
            "size": [properties.defaultSize.height, properties.defaultSize.width]
            if isinstance(properties, schema.ImagePropertiesT) and properties.defaultSize
            else None,
            "normalization": None if normalization is None else {
                "mean": np.asarray(normalization.mean).tolist(),
                "std": np.asarray(normalization.std).tolist()},
            "stats": None if t.stats is None else {
                "min": np.asarray(t.stats.min).tolist(), "max": np.asarray(t.stats.max).tolist()},
            "associated_files": {_text(f.name): file_types[f.type]
                                 for f in t.associatedFiles or []},
        }

    (subgraph,) = meta.subgraphMetadata
    return {
        "name": _text(meta.name), "description": _text(meta.description),
        "version": _text(meta.version), "author": _text(meta.author),
        "min_parser_version": _text(meta.minParserVersion),
        "input": [tensor(t) for t in subgraph.inputTensorMetadata or []],
        "output": [tensor(t) for t in subgraph.outputTensorMetadata or []],
        "files": packed_files(content),
    }
