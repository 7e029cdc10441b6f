#!/usr/bin/env bash
# Regenerates ../noble.js, the one file of third-party code the page ships,
# from the versions package-lock.json pins: `npm ci` installs exactly those,
# esbuild bundles entry.js (not minified, so it can be read and diffed), and
# the licences of the bundled packages go on top. The relay builds the
# result into its binary (relay/src/server.rs) and serves it as /noble.js.
set -euo pipefail
cd "$(dirname "$0")"
echo "+ npm ci" >&2
npm ci --no-audit --no-fund --ignore-scripts >&2
out=../noble.js
{
    echo "// Bundled by relay/static/vendor/build.sh from package-lock.json:"
    for p in @noble/curves @noble/hashes; do
        v=$(node -p "require('./node_modules/$p/package.json').version")
        echo "//   $p $v"
    done
    echo "// Do not edit: change entry.js or the pinned versions and run build.sh."
    echo "/*"
    for p in @noble/curves @noble/hashes; do
        echo "$p licence:"
        echo
        cat "node_modules/$p/LICENSE"
        echo
    done
    echo "*/"
    node_modules/.bin/esbuild entry.js --bundle --format=esm --target=es2020 --legal-comments=none
} >"$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $(wc -c <"$out") bytes to relay/static/noble.js" >&2
