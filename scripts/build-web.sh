#!/usr/bin/env bash
# Build the web pages' front-end assets: install the npm packages pinned in
# src/runwatch/web/frontend/package-lock.json (npm ci, from whatever registry npm is
# configured for) and copy the files the browser needs into
# src/runwatch/web/static/vendor/ (not in git; shipped in the wheel). Run by
# scripts/try.sh, scripts/test.sh and CI; rerun after changing package.json.
#
# --ignore-scripts: JSROOT's package depends on node-only packages (canvas, jsdom, ...)
# for drawing without a browser; their native builds are not needed in a browser and
# would need a compiler, so no package's install script runs.
set -euo pipefail
cd "$(dirname "$0")/.."

frontend=src/runwatch/web/frontend
vendor=src/runwatch/web/static/vendor

source scripts/lib/apt.sh
command -v npm >/dev/null || apt_install nodejs npm

(cd "$frontend" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)

jsroot=$frontend/node_modules/jsroot
rm -rf "$vendor"
mkdir -p "$vendor/jsroot"
# The ES modules (modules/main.mjs and what it imports, d3 and three bundled in), the
# fonts JSROOT loads for its text, and the licence.
cp -r "$jsroot/modules" "$jsroot/fonts" "$jsroot/LICENSE" "$vendor/jsroot/"
node -e 'console.log(require(process.argv[1]).version)' "$PWD/$jsroot/package.json" \
  > "$vendor/jsroot/VERSION"

# Swagger UI for the API's /docs page, served from here rather than from a CDN: the site
# must work with no internet (a control room network).
swagger=$frontend/node_modules/swagger-ui-dist
mkdir -p "$vendor/swagger-ui"
cp "$swagger/swagger-ui-bundle.js" "$swagger/swagger-ui.css" "$swagger/favicon-32x32.png" \
  "$swagger/LICENSE" "$vendor/swagger-ui/"
echo "build-web: JSROOT $(cat "$vendor/jsroot/VERSION"), Swagger UI in $vendor ($(du -sh "$vendor" | cut -f1))"
