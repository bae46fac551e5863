#!/usr/bin/env bash
# Build .venv from requirements.txt, or reuse it when the file's hash and the interpreter are unchanged.
#
# The interpreter: $PYTHON if set; else Debian's /usr/bin/python3.11 when it is there; else the first
# python3.11 (or python3 at 3.11) on PATH. pyenv's default build (first on PATH on this machine; built
# without --enable-optimizations) ran a pure-Python benchmark in 2.3 s where Debian's took 1.9 s, and
# the test suite is nearly all Python processes. Debian's needs its python3.11-venv package (installed
# as root when missing, like the stack's other Debian packages).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv
stamp="$venv/.requirements.sha256"

is_311() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; }

python=${PYTHON:-}
if [ -z "$python" ] && [ -x /usr/bin/python3.11 ] && is_311 /usr/bin/python3.11; then
  python=/usr/bin/python3.11
  if ! "$python" -c 'import ensurepip' 2>/dev/null; then
    # Its venv module needs Debian's python3.11-venv. Not root: take the Python on PATH below instead.
    if [ "$(id -u)" = 0 ]; then
      . "$(dirname "$0")/debian_install.sh"
      debian_install "python3.11-venv (venv for Debian's Python)" "" python3.11-venv || python=
    else
      python=
    fi
  fi
fi
if [ -z "$python" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null && is_311 "$candidate"; then
      python=$(command -v "$candidate"); break
    fi
  done
fi
if [ -z "$python" ]; then
  echo "Python 3.11 not found: install it (apt-get install python3.11 python3.11-venv) or set PYTHON=/path/to/python3.11" >&2
  exit 2
fi

want="$(sha256sum requirements.txt | cut -d' ' -f1) $python"
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then exit 0; fi
echo "building $venv from requirements.txt with $python (requirements or interpreter changed, or no venv)..." >&2
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check --upgrade pip
"$venv/bin/pip" install -q --disable-pip-version-check -r requirements.txt
echo "$want" > "$stamp"
