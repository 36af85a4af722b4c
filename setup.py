"""spvit_tf: SPViT latency-aware soft token pruning for Vision Transformers in Keras 3."""

from setuptools import find_packages, setup

setup(
    name="spvit_tf",
    version="0.1.0",
    description="SPViT token pruning for DeiT/PiT in TensorFlow/Keras 3, exported to TFLite",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["spvit_tf", "spvit_tf.*"]),
    package_data={"spvit_tf": ["datasets/*.tar.gz", "datasets/*.md"]},
    install_requires=[
        "tensorflow~=2.21.0",
        "keras>=3.10,<4",
        "tensorflow-datasets>=4.9",
        "importlib_resources",  # tensorflow-datasets needs it to prepare datasets
        "tensorboard",  # tf.summary's implementation; TF 2.21 no longer pulls it in
        "numpy>=1.26",
        "absl-py>=2.1",
        "safetensors>=0.4",
        "ai-edge-litert>=2.0",
        "ai-edge-quantizer>=0.10",
        "matplotlib>=3.7",  # report and visualize plots
    ],
    extras_require={
        # MediaPipe Tasks: the TFLite metadata schema the exporter writes with, and the app
        # runtime the tests load the exported files in
        "app": ["mediapipe==1.2.2"],
        # pytest-xdist: the suite runs in up to 4 worker processes (pyproject's addopts)
        "test": ["pytest>=8", "pytest-xdist>=3.5", "mediapipe==1.2.2"],
    },
)
