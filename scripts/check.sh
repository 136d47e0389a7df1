#!/usr/bin/env bash
# Static checks outside pytest: ruff lint, ruff format, mypy, import cycles, and the docs
# site (mkdocs build --strict: any warning, a broken link included, fails it). Run from
# anywhere after `bash scripts/setup.sh --test`; exits non-zero on the first check that fails.
#   bash scripts/check.sh
#   CHECK_PYTHON=/path/to/venv/bin/python bash scripts/check.sh   # another environment
set -euo pipefail
cd "$(dirname "$0")/.."
py=${CHECK_PYTHON:-.venv/bin/python}
paths=(src tests scripts bench)
echo "check: ruff check ${paths[*]}"
"$py" -m ruff check "${paths[@]}"
echo "check: ruff format --check ${paths[*]}"
"$py" -m ruff format --check "${paths[@]}"
echo "check: mypy src/lookuplens"
"$py" -m mypy --config-file pyproject.toml src/lookuplens
echo "check: import cycles"
"$py" scripts/check_import_cycles.py
echo "check: mkdocs build --strict"
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
# not --quiet: it hides the warnings, and then --strict passes whatever they say
"$py" -m mkdocs build --strict --site-dir "$site"
