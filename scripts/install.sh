#!/usr/bin/env bash
# Creates .venv and installs keras-pspnet for CPU with the given extras (e.g. "serving" or "test").
# Used by quickstart.sh and .ci/run; GPU users: pip install -e ".[gpu]" instead.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-serving}"
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
pins="tensorflow-cpu==2.21.0"
case "$extras" in  # the tests' PyTorch references need torch: its CPU build (a bare "torch" pulls GBs of CUDA)
  *test*) pins="$pins torch==2.13.0" ;;
esac
python -m pip install -q $pins -e ".[${extras}]"
case "$extras" in  # MediaPipe's ImageSegmenter runs our .tflite in the tests. --no-deps: its opencv-contrib-python
  # (cv2 5.x) would replace the cv2 4.12 the augmentation tests compare with; its tasks work with 4.12.
  *test*) python -m pip install -q --no-deps "mediapipe==1.2.3" && python -m pip install -q certifi matplotlib "flatbuffers>=25.9,<26" ;;
esac
case "$extras" in  # NNCF declares scikit-learn but never imports it; installed, it is imported (with SciPy) by every
  # `import keras` (keras.src.wrappers), 1-2 s more for each of the hundreds of processes the tests start
  *test*openvino*|*openvino*test*) python -m pip uninstall -q -y scikit-learn ;;
esac
# TF Serving protos for the gRPC client and the tests that parse our warmup records (export itself does not need
# them); their wheel asks for the full tensorflow, so --no-deps.
python -m pip install -q --no-deps "tensorflow-serving-api==2.21.*"
