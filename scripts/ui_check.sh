#!/usr/bin/env bash
# The MLflow UI check a person would otherwise do by hand (issue 19), with screenshots to look at.
#
#   bash scripts/ui_check.sh [SHOTS_DIR]        # default: ./ui_shots
#
# Runs tests/test_ui.py (pytest -m ui): makes a tiny store with the real commands (zo finetune, zo compare,
# zo sweep --backend optuna, zo meta-train --register on tiny:llama, SQLite in a temp dir), starts `mlflow ui` with
# the command they print, checks names, metrics, notes and the printed links through the REST API, then drives
# headless Chromium (Debian's `chromium`; no browser download) to the printed links, waits on each page until what
# a person looks for is shown (runs listed, descriptions, every metric's chart drawn: not loading spinners; a page
# that never gets there fails the check) and saves a screenshot of each into SHOTS_DIR: experiments list, fine-tune
# runs view / run page / metrics, compare runs view / parent, sweep runs view / parent / trials, registry version.
# About 3-5 minutes on 2 cores (the browser part under a minute).
#
# Without chromium the REST checks still run and the browser test is skipped, saying so (apt-get install -y
# chromium; .ci/run installs it on a CI machine when it runs as root).
set -euo pipefail
cd "$(dirname "$0")/.."
shots="$(realpath -m "${1:-ui_shots}")"
# shellcheck disable=SC1091
[ -d .venv ] || bash scripts/setup.sh
. .venv/bin/activate
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
  echo "ui_check: chromium not found: the screenshots are skipped (Debian: apt-get install -y chromium)" >&2
mkdir -p "$shots"
ZO_UI_SHOTS="$shots" OMP_NUM_THREADS=1 python -m pytest -m ui -q -p no:cacheprovider tests/test_ui.py "${@:2}"
echo "ui_check: screenshots in $shots:" >&2
ls -l "$shots" >&2
