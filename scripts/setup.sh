#!/usr/bin/env bash
# Set up lookuplens in ./.venv from a clean clone. Idempotent: a second run only checks.
#   bash scripts/setup.sh          # the package and everything the main job needs
#   bash scripts/setup.sh --test   # also the test tools (and what the browser tests need)
#
# torch: an already importable torch is kept (our range admits 2.2 to 2.14, so pip never
# replaces it with a multi-GB CUDA build). Otherwise we install torch==2.13.0, which
# resolves to a local CPU wheel where one lies on disk; where none does, the CPU build
# from the PyTorch index.
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
for a in "$@"; do
  case "$a" in
    --test) want_test=1 ;;
    *) echo "setup.sh: unknown option $a (use --test)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  $PY -m venv .venv
fi
pip=(.venv/bin/python -m pip -q --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "setup: installing torch (CPU)"
  "${pip[@]}" install "torch==2.13.0" 2>/dev/null \
    || "${pip[@]}" install torch --index-url https://download.pytorch.org/whl/cpu
fi
extras="datasets,llm,serve,ray"
[ "$want_test" = 1 ] && extras="$extras,test"
stamp=".venv/.lookuplens-$extras-$(cksum pyproject.toml | cut -d' ' -f1)"
if [ ! -e "$stamp" ]; then
  echo "setup: installing lookuplens[$extras]"
  "${pip[@]}" install -e ".[$extras]"
  .venv/bin/python -c "import lookuplens, torch; print('setup: lookuplens', lookuplens.__version__, 'torch', torch.__version__)"
  touch "$stamp"
fi
# the tokenizer tests use the real Mistral v1 SentencePiece file that ships inside the
# mistral-common package; only its data is needed, so none of its dependencies (which pin
# numpy) are installed
if [ "$want_test" = 1 ] && ! .venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('mistral_common') is None)"; then
  echo "setup: installing mistral-common (its tokenizer files, for the tests)"
  "${pip[@]}" install --no-deps "mistral-common>=1.5"
fi
# the dashboard's browser tests drive Debian's chromium through Playwright; never a
# browser download (no `playwright install`)
if [ "$want_test" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing chromium (dashboard browser tests)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: no chromium; the dashboard's browser tests will be skipped (apt-get install chromium)"
  fi
fi
