#!/usr/bin/env bash
# Installs what tests/browser.rs needs; idempotent and quick when all is present.
#   1. apt: chromium, nginx, haproxy, qemu-system-x86 (apt-get update only if one is missing)
#   2. npm ci in tests/browser (noVNC 1.7.0, xterm.js 6.0.0, playwright-core; pinned by package-lock.json)
#   3. tests/browser/assets/{novnc,xterm}: real copies of the two npm packages (the relay's
#      asset loader skips symlinked files), refreshed when package-lock.json changes
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || need+=(nginx)
[ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  echo "install.sh: apt-get install ${need[*]}" >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

cd "$here"
stamp="node_modules/.nexor-lock"
if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
  echo "install.sh: npm ci in $here" >&2
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json "$stamp"
fi

astamp="assets/.nexor-lock"
if [ ! -f "$astamp" ] || ! cmp -s package-lock.json "$astamp"; then
  echo "install.sh: copying noVNC and xterm.js into $here/assets" >&2
  rm -rf assets.tmp
  mkdir -p assets.tmp
  cp -rL node_modules/@novnc/novnc assets.tmp/novnc
  cp -rL node_modules/@xterm/xterm assets.tmp/xterm
  cp package-lock.json assets.tmp/.nexor-lock
  rm -rf assets
  mv assets.tmp assets
fi
