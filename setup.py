import re

from setuptools import find_packages, setup

# The version is written once, in the package (converted-model cache names and checkpoints read it).
VERSION = re.search(r'__version__ = "([^"]+)"', open("keras_pspnet/__init__.py", encoding="utf-8").read()).group(1)

setup(
    name="keras-pspnet",
    version=VERSION,
    description="PSPNet (Pyramid Scene Parsing Network) in Keras 3, from model.fit to TF Serving and TFLite",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["keras_pspnet", "keras_pspnet.*"]),
    install_requires=["keras>=3.15,<4", "numpy", "ml-dtypes", "h5py", "tqdm", "pyyaml", "pillow", "tensorflow-datasets",
                      "tensorboard"],
    extras_require={
        # Pick one: `tensorflow` for GPUs, `tensorflow-cpu` for CPU-only machines and CI.
        "gpu": ["tensorflow[and-cuda]==2.21.*"],
        "cpu": ["tensorflow-cpu==2.21.*"],
        "jax": ["jax"],
        "serving": ["ai-edge-litert"],  # gRPC client: + `pip install --no-deps tensorflow-serving-api`
        # torch only builds the reference PyTorch models the tests compare with; conversion needs no torch.
        # opencv: the augmentation tests compare with cv2 4.12 (5.0 changed warpAffine; 4.14 converts HSV in blocks
        # of 64 pixels on this CPU, mmcv-era builds in 32, which the photometric test mirrors).
        # ai-edge-litert and mediapipe (scripts/install.sh) at the versions the .tflite JSON states as tested.
        # ONNX and OpenVINO: export needs onnx (and openvino + nncf for an IR); predict/evaluate the runtime.
        "onnx": ["onnx>=1.16", "onnxruntime>=1.18"],
        "openvino": ["onnx>=1.16", "openvino>=2025.0", "nncf>=2.16"],
        # The documentation site (mkdocs.yml, docs/): `mkdocs build --strict`, as .ci/run does.
        "docs": ["mkdocs>=1.6,<2", "mkdocs-material>=9.5,<10", "mkdocstrings[python]>=0.29,<2"],
        "test": ["pytest", "pytest-xdist", "ruff", "torch>=2.0", "jax", "ai-edge-litert==2.3.0",
                 "opencv-python-headless==4.12.*"],
    },
    entry_points={"console_scripts": ["pspnet=keras_pspnet.cli:main"]},
    classifiers=["Programming Language :: Python :: 3", "Topic :: Scientific/Engineering :: Image Recognition"],
)
