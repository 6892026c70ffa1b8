#!/usr/bin/env bash
# Install AtlasLab with its test tools, then run the linters and the whole test suite.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$repo/scripts/install.sh" --test
prefix="${ATLASLAB_PREFIX:-$([ "$(id -u)" = 0 ] && echo /opt/atlaslab || echo "$HOME/.local/atlaslab")}"
cd "$repo"
"$prefix/venv/bin/ruff" check .
"$prefix/venv/bin/ruff" format --check .
exec "$prefix/venv/bin/python" -m pytest -p no:cacheprovider "$@"
