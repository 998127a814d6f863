#!/bin/sh
# The Ray baseline's own environment (never the project's dependencies):
# bench/.venv-ray with `pip install ray`. bench/bench_interactive.py runs the Ray column
# in a subprocess of it, and skips that column with a note when it is missing.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
"$python" -m venv "$here/.venv-ray"
"$here/.venv-ray/bin/python" -m pip install --quiet --upgrade pip
"$here/.venv-ray/bin/python" -m pip install --quiet ray
"$here/.venv-ray/bin/python" -c "import ray; print('ray', ray.__version__)"
