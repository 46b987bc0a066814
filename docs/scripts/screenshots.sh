#!/usr/bin/env bash
# The app screenshots of the "Share a model" guide, taken by the browser tests (tests/test_serve.py)
# serving runs/digits, which docs/scripts/transcripts.sh trains (scikit-learn's digits: no image of the
# archives in ../shared/datasets may be committed, screenshots included). Needs Debian's chromium.
set -euo pipefail
shots=build/docs-screenshots
rm -rf "$shots"
VITRAIN_SERVE_RUN=runs/digits VITRAIN_TEST_ARTIFACTS="$shots" \
  python -m pytest -q tests/test_serve.py -k "upload_shows or run_tab"
mkdir -p docs/guides/img
# the inspect page: of data the test makes (smooth random pictures), never of the archives
VITRAIN_TEST_ARTIFACTS="$shots" python -m pytest -q tests/test_inspect.py -k real_browser
for name in serve-classify serve-run inspect; do  # 256 colours: a fifth of the bytes, the same to the eye
  python -c "import sys; from PIL import Image; Image.open(sys.argv[1]).convert('RGB').quantize(256).save(sys.argv[2], optimize=True)" \
    "$shots/$name.png" "docs/guides/img/$name.png"
done
