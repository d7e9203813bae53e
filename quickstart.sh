#!/usr/bin/env bash
# Quick start on a fresh machine (Python 3.11, CPU): install, then train PSPNet and the FCN baseline on the
# synthetic context dataset, compare them, export a SavedModel and an int8 TFLite model, draw the picture.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/install.sh serving
. .venv/bin/activate
pspnet demo "$@"
