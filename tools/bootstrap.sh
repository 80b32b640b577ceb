#!/usr/bin/env bash
# Bring a fresh machine to the point where `make demo` and `make test` run: uv, the virtual
# environment (from uv.lock), and the npm packages of the dev identity provider.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v uv >/dev/null 2>&1; then
  if [ ! -x .tools/bin/uv ]; then
    echo "bootstrap: installing uv from PyPI into .tools/" >&2
    python3 -m venv .tools
    .tools/bin/pip install -q uv
  fi
  export PATH="$PWD/.tools/bin:$PATH"
fi

uv sync --frozen --quiet

if [ -f deploy/dev-idp/package.json ]; then
  if ! command -v node >/dev/null 2>&1; then
    echo "bootstrap: installing Node.js from Debian's packages" >&2
    apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
  fi
  if [ ! -d deploy/dev-idp/node_modules ] || [ deploy/dev-idp/package-lock.json -nt deploy/dev-idp/node_modules ]; then
    (cd deploy/dev-idp && npm ci --no-audit --no-fund --loglevel=error)
    touch deploy/dev-idp/node_modules
  fi
fi
