#!/usr/bin/env bash
# The documentation, checked as a reader meets it (one line in .ci/run):
#   bash scripts/docs-check.sh
# 1. chromium from Debian's packages if it is missing and we are root (apt-get install -y
#    chromium); without it the browser checks skip, saying so;
# 2. mkdocs build --strict (warnings are errors) into a temp folder;
# 3. the doc tests: every code block run, type-checked or parsed (test_doc_snippets.py),
#    the tutorial followed as written (test_docs_tutorial.py), the reference against the
#    code (test_docs.py), and the built site: links, raw markup, and every page opened in
#    headless Chromium, its diagrams drawn, search working (test_docs_site.py), with a
#    screenshot of every page kept in a temp folder whose path is printed.
# Needs the venv of .ci/run (.venv with the 'dev' extra, which includes 'docs').
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-.venv/bin/python}

if ! command -v chromium >/dev/null && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "docs-check: installing chromium (apt-get)"
    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) >/dev/null ||
        echo "docs-check: could not install chromium: the browser checks will skip" >&2
fi

site_dir=$(mktemp -d /tmp/aioelect-docs-site.XXXXXX)
trap 'rm -rf "$site_dir"' EXIT
echo "docs-check: mkdocs build --strict"
NO_MKDOCS_2_WARNING=1 "$PY" -m mkdocs build --strict -q -d "$site_dir"

echo "docs-check: doc tests"
"$PY" -m pytest -q -rs -s -p no:cacheprovider \
    tests/test_docs.py tests/test_doc_snippets.py tests/test_docs_tutorial.py tests/test_docs_site.py
