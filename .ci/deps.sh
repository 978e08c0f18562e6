#!/usr/bin/env bash
# Installs what the object-store tests need that pip does not give: Azurite (the Azure blob emulator).
# Idempotent: does nothing when the pinned version is already in .ci/node_modules.
# azurite 3.35.0 is the last release that runs on node 20 (newer ones need node >= 21).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
AZURITE_VERSION=3.35.0

if ! command -v npm >/dev/null 2>&1; then
  echo "deps.sh: npm not found; install node 20 + npm (e.g. apt-get install -y nodejs npm)" >&2
  exit 1
fi

installed="$(node -p "require('$here/node_modules/azurite/package.json').version" 2>/dev/null || true)"
if [ "$installed" != "$AZURITE_VERSION" ]; then
  echo "deps.sh: installing azurite@$AZURITE_VERSION into $here/node_modules"
  npm install --prefix "$here" --no-save --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION"
fi
test -x "$here/node_modules/.bin/azurite-blob"
echo "deps.sh: azurite-blob $AZURITE_VERSION at $here/node_modules/.bin/azurite-blob"
