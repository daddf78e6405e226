#!/usr/bin/env bash
# Build the smolvm guest kernel from Debian's linux-source-6.1 and our config fragment.
#
#   runtime/kernel/build.sh [--out DIR]
#
# The result is cached outside the repository, keyed by the SHA-256 of the fragment, this
# script and the installed source package version, so a second run is instant:
#   ${SMOLVM_KERNEL_CACHE:-${XDG_CACHE_HOME:-~/.cache}/smolvm/kernel}/<key>/{vmlinux,bzImage,config}
# With --out, vmlinux and bzImage are also copied (hardlinked when possible) into DIR.
# The last line printed on stdout is the cache directory.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fragment="$here/microvm.config"
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    *) echo "usage: $0 [--out DIR]" >&2; exit 2 ;;
  esac
done

log() { echo "kernel: $*" >&2; }

# --- prerequisites ------------------------------------------------------------
need=()
for pkg in linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev xz-utils; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

srcver=$(dpkg-query -W -f='${Version}' linux-source-6.1)
tarball=/usr/src/linux-source-6.1.tar.xz
[ -f "$tarball" ] || { log "missing $tarball (reinstall linux-source-6.1)"; exit 1; }

key=$( { echo "linux-source-6.1 $srcver"; cat "$fragment" "$0"; } | sha256sum | cut -c1-16)
cache_root=${SMOLVM_KERNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/smolvm/kernel}
cache="$cache_root/$key"

publish() {
  if [ -n "$out" ]; then
    mkdir -p "$out"
    for f in vmlinux bzImage; do
      ln -f "$cache/$f" "$out/$f" 2>/dev/null || cp -f "$cache/$f" "$out/$f"
    done
  fi
  echo "$cache"
}

if [ -f "$cache/vmlinux" ] && [ -f "$cache/bzImage" ] && [ -f "$cache/sha256sums" ] \
   && (cd "$cache" && sha256sum --quiet -c sha256sums); then
  log "cached $cache"
  publish
  exit 0
fi

# --- build in a private directory, publish atomically ---------------------------
mkdir -p "$cache_root"
work=$(mktemp -d "$cache_root/.build-$key.XXXXXX")
trap 'rm -rf "$work"' EXIT
log "building linux-source-6.1 $srcver (key $key) in $work"
start=$(date +%s)
tar -xJf "$tarball" -C "$work"
src="$work/linux-source-6.1"
jobs=$(nproc)
make -C "$src" -s KCONFIG_ALLCONFIG="$fragment" allnoconfig >&2

# Every option the fragment sets must be in the final config exactly as written.
missing=0
while IFS= read -r line; do
  case "$line" in CONFIG_*=*) ;; *) continue ;; esac
  if ! grep -qxF "$line" "$src/.config"; then
    log "fragment option did not take effect: $line (now: $(grep -E "^(# )?${line%%=*}[= ]" "$src/.config" || echo unset))"
    missing=1
  fi
done < "$fragment"
[ "$missing" -eq 0 ] || { log "fix microvm.config (a dependency is missing or the option was renamed)"; exit 1; }

make -C "$src" -s -j"$jobs" KBUILD_BUILD_TIMESTAMP="1970-01-01 00:00:00 UTC" KBUILD_BUILD_USER=smolvm \
  KBUILD_BUILD_HOST=smolvm vmlinux bzImage >&2

stage="$work/out"
mkdir -p "$stage"
cp "$src/vmlinux" "$stage/vmlinux"
strip --strip-debug "$stage/vmlinux" 2>/dev/null || true
cp "$src/arch/x86/boot/bzImage" "$stage/bzImage"
cp "$src/.config" "$stage/config"
echo "linux-source-6.1 $srcver" > "$stage/version"
(cd "$stage" && sha256sum vmlinux bzImage config > sha256sums)
sync -f "$stage/vmlinux" 2>/dev/null || sync
rm -rf "$cache.old"
[ -e "$cache" ] && mv "$cache" "$cache.old"
mv "$stage" "$cache"
rm -rf "$cache.old"
log "built in $(( $(date +%s) - start )) s: $(du -h "$cache/vmlinux" | cut -f1) vmlinux, $(du -h "$cache/bzImage" | cut -f1) bzImage"
publish
