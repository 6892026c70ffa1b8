#!/usr/bin/env bash
# Install AtlasLab on this machine: system packages, a virtual environment users' servers can run, the proxy.
#   scripts/install.sh           install into $ATLASLAB_PREFIX (default /opt/atlaslab as root, ~/.local/atlaslab otherwise)
#   scripts/install.sh --test    also the test tools (pytest, the OpenID Connect provider for login tests)
#   scripts/install.sh --editable  install the package in editable mode (development)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
test_extras=0 editable=0
for arg in "$@"; do
  case "$arg" in
    --test) test_extras=1 ;;
    --editable) editable=1 ;;
    *) echo "unknown option: $arg" >&2; exit 2 ;;
  esac
done
if [ "$(id -u)" = 0 ]; then prefix="${ATLASLAB_PREFIX:-/opt/atlaslab}"; else prefix="${ATLASLAB_PREFIX:-$HOME/.local/atlaslab}"; fi

step() { printf '\n==> %s\n' "$*"; }

# Users' servers run under their own accounts, so the Python they run must live where every account can
# read it: Debian's /usr/bin/python3 (not an interpreter under /root) and a venv under $prefix.
python=/usr/bin/python3
need_apt=()
[ -x "$python" ] && "$python" -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3 python3-venv)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
# The workbench panel's browser test drives Debian's chromium (Playwright cannot download browsers here).
if [ $test_extras = 1 ] && ! command -v chromium >/dev/null; then need_apt+=(chromium); fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then echo "missing: ${need_apt[*]}; install them (apt-get install ${need_apt[*]}) and rerun" >&2; exit 1; fi
  step "Installing system packages: ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
"$python" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' || { echo "Python 3.11+ is needed at $python" >&2; exit 1; }

step "Creating the virtual environment in $prefix/venv"
mkdir -p "$prefix"
[ -x "$prefix/venv/bin/python" ] || "$python" -m venv "$prefix/venv"
"$prefix/venv/bin/python" -m pip install --quiet --upgrade pip
# The courses extra: what the course packs' notebooks import (scikit-learn, pandas, pvlib).
spec="$repo[courses]"; [ $test_extras = 1 ] && spec="$repo[test,courses]"
if [ $editable = 1 ]; then
  "$prefix/venv/bin/pip" install --quiet --progress-bar off -e "$spec"
  # An editable install leaves out data-files: link the built workbench panel where JupyterLab looks.
  mkdir -p "$prefix/venv/share/jupyter/labextensions"
  ln -sfn "$repo/atlaslab/labextension" "$prefix/venv/share/jupyter/labextensions/atlaslab-workbench"
else
  "$prefix/venv/bin/pip" install --quiet --progress-bar off "$spec"
fi

step "Installing the proxy (configurable-http-proxy) with npm"
if [ $test_extras = 1 ]; then (cd "$repo" && npm ci --no-audit --no-fund --loglevel=error)
else (cd "$repo" && npm ci --omit=dev --no-audit --no-fund --loglevel=error); fi
mkdir -p "$prefix/bin"
if [ $test_extras = 1 ]; then
  step "Installing the workbench panel's build tools (its TypeScript tests)"
  (cd "$repo/lab_extensions/atlaslab-workbench" && npm ci --no-audit --no-fund --loglevel=error)
  step "Installing helm and kubectl for the chart tests"
  "$prefix/venv/bin/python" "$repo/scripts/fetch_helm.py" "$prefix"
  step "Building the test Kubernetes control plane (once per version, cached in ${ATLASLAB_K8S_CACHE:-/var/cache/atlaslab-k8s})"
  if command -v go >/dev/null; then
    "$repo/scripts/k8s/build.sh"
  else
    echo "warning: no Go toolchain: the real-cluster tests (tests/test_kube_real.py) cannot run here" >&2
  fi
fi
ln -sf "$repo/node_modules/.bin/configurable-http-proxy" "$prefix/bin/configurable-http-proxy"
ln -sf "$prefix/venv/bin/atlaslab" "$prefix/bin/atlaslab"
# Course packs stay in the clone; `atlaslab course` finds them through PREFIX/courses.
ln -sfn "$repo/courses" "$prefix/courses"
chmod -R a+rX "$prefix"

step "Done"
echo "atlaslab is at $prefix/bin/atlaslab (add $prefix/bin to PATH)"
