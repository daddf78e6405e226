#!/usr/bin/env bash
# Assemble the guest initramfs: the agent as /init plus the built-in busybox userland that
# bare VMs run (under /rootfs, the lower layer of their root filesystem).
#
#   runtime/agent/initramfs.sh AGENT_BINARY OUTPUT
#
# The archive is uncompressed (the kernel unpacks it without a decompression pass, which is
# what costs time under TCG) and reproducible: fixed owners, mtimes and order.
set -euo pipefail
agent=$1 out=$2
busybox=${BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || { echo "initramfs: $busybox missing: apt-get install busybox-static" >&2; exit 1; }
file "$busybox" 2>/dev/null | grep -q 'statically linked' || ldd "$busybox" 2>&1 | grep -q 'not a dynamic' \
  || { echo "initramfs: $busybox is not static: apt-get install busybox-static" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -m 0755 "$agent" "$stage/init"
mkdir -p "$stage"/{proc,sys,dev,tmp,run,smolvm}
r="$stage/rootfs"
mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,home,var/tmp,workspace}
install -d -m 0700 "$r/root"
install -d -m 1777 "$r/tmp"
install -m 0755 "$busybox" "$r/bin/busybox"
"$busybox" --list-full | while read -r applet; do
  [ "$applet" = bin/busybox ] && continue
  [ -e "$r/$applet" ] || ln -s /bin/busybox "$r/$applet"
done
cat > "$r/etc/passwd" <<'P'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
P
cat > "$r/etc/group" <<'G'
root:x:0:
tty:x:5:
nogroup:x:65534:
G
cat > "$r/etc/profile" <<'S'
export PS1='\h:\w\$ '
S
echo "smolvm bare VM (busybox $("$busybox" | head -1 | awk '{print $2}'))" > "$r/etc/smolvm-release"

find "$stage" -exec touch -h -d @0 {} +
tmp="$out.tmp.$$"
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible) > "$tmp"
sync "$tmp"
mv -f "$tmp" "$out"
