# Sourced by the scripts: create .venv with the project installed (and its test extras when asked), once, and
# the benchmark's distribution (bench/: `meshrun bench`, python -m meshrun_bench.consumers) beside it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MESHRUN_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
extras="${1:-fast}"
stamp="$VENV/.meshrun-installed-$extras"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "meshrun needs Python 3.11 or newer ($PY is $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
    exit 1
  }
  "$PY" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ] || [ "$ROOT/bench/pyproject.toml" -nt "$stamp" ]; then
  echo "meshrun: installing into $VENV (first run only)..." >&2
  pip_log="$VENV/pip-install.log"
  if ! { "$VENV/bin/python" -m pip install --upgrade pip &&
         "$VENV/bin/python" -m pip install -e "$ROOT[$extras]" -e "$ROOT/bench"; } >"$pip_log" 2>&1; then
    tail -n 30 "$pip_log" >&2
    echo "meshrun: installing the Python packages failed (full log: $pip_log)" >&2
    exit 1
  fi
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
