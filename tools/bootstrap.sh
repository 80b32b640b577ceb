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

# Bytecode compiled once here: where PYTHONDONTWRITEBYTECODE is set (as on the CI machines) every process
# would otherwise compile every module it imports from source, ~3 s of CPU per service process started.
uv sync --frozen --quiet --compile-bytecode
uv run --frozen --quiet python -m compileall -q -j 0 libs/kit/src libs/contracts/src services/*/src launcher/src >/dev/null

# PostGIS for the assets service's spatial queries on PostgreSQL: Debian's package for the local server's
# major version, where a local server runs without it (the embedded SQLite needs nothing).
if command -v psql >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  pg_dsn="${LIFELINE_TEST_PG_DSN:-postgresql://postgres@127.0.0.1:5432/postgres}"
  if has=$(psql "$pg_dsn" -Atc "select count(*) from pg_available_extensions where name = 'postgis'" 2>/dev/null) \
      && [ "$has" = "0" ]; then
    major=$(psql "$pg_dsn" -Atc "show server_version_num" | cut -c1-2)
    echo "bootstrap: installing PostGIS for PostgreSQL $major from Debian's packages" >&2
    (apt-get install -y -qq "postgresql-$major-postgis-3" >/dev/null 2>&1 \
      || (apt-get update -qq && apt-get install -y -qq "postgresql-$major-postgis-3" >/dev/null)) \
      || echo "bootstrap: could not install PostGIS; PostgreSQL spatial tests will fail" >&2
  fi
fi

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
