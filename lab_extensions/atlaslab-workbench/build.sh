#!/bin/sh
# Builds the panel into atlaslab/labextension (committed, so users need no Node).
# JupyterLab's core package.json (what the extension shares with JupyterLab) comes from the Python jupyterlab.
set -e
cd "$(dirname "$0")"
PYTHON="${PYTHON:-/opt/atlaslab/venv/bin/python}"
CORE="$("$PYTHON" -c 'import jupyterlab, os; print(os.path.join(os.path.dirname(jupyterlab.__file__), "staging"))')"
rm -rf lib tsconfig.tsbuildinfo ../../atlaslab/labextension
npx tsc
npx build-labextension --core-path "$CORE" .
cp install.json ../../atlaslab/labextension/install.json
