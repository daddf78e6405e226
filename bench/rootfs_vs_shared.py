#!/usr/bin/env python3
"""Root filesystem delivery: squashfs on virtio-blk (what smolvm does) against the image's
layers extracted on the host and shared into the guest over 9p or virtio-fs.

    bench/rootfs_vs_shared.py [--runs 5] [--layer PATH.tar.gz]

Default layer: the Python test fixture (Debian python3.11 packages), built by the registry
tests into ~/.cache/smolvm-test-fixtures. For each way the guest boots the same kernel with
a busybox init that mounts the tree, runs `python3 -c 'import json'` from it, reads every
file once, and powers off. Reported: first-run preparation on the host (building the squashfs vs extracting the
layer) and, per way, the wall time of boot + import + power-off, the import alone, and
reading every file of the tree once (the delivery itself, without the interpreter's CPU).
"""
import argparse, glob, os, platform, re, shutil, statistics, subprocess, sys, tempfile, time
from datetime import date

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUEST = os.path.join(ROOT, "target", "guest")
VIRTIOFSD = "/usr/lib/qemu/virtiofsd"

INIT = r"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs dev /dev
MODE=$(/bin/busybox sed -n 's/.*bench.mode=\([a-z0-9]*\).*/\1/p' /proc/cmdline)
case $MODE in
  squashfs) /bin/busybox mount -t squashfs -o ro /dev/vda /mnt ;;
  9p) /bin/busybox mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose host /mnt ;;
  virtiofs) /bin/busybox mount -t virtiofs -o ro host /mnt ;;
esac
T0=$(/bin/busybox cut -d' ' -f1 /proc/uptime)
/bin/busybox chroot /mnt /usr/bin/python3 -c 'import json' && OK=ok
T1=$(/bin/busybox cut -d' ' -f1 /proc/uptime)
/bin/busybox find /mnt -type f -exec /bin/busybox cat {} + > /dev/null
T2=$(/bin/busybox cut -d' ' -f1 /proc/uptime)
echo "BENCH $MODE $OK mounted=$T0 imported=$T1 read=$T2"
/bin/busybox reboot -f
"""


def make_initramfs(tmp):
    stage = os.path.join(tmp, "initramfs")
    for d in ["bin", "proc", "dev", "mnt"]:
        os.makedirs(os.path.join(stage, d), exist_ok=True)
    shutil.copy("/bin/busybox", os.path.join(stage, "bin", "busybox"))
    with open(os.path.join(stage, "init"), "w") as f:
        f.write(INIT)
    os.chmod(os.path.join(stage, "init"), 0o755)
    out = os.path.join(tmp, "initramfs.cpio")
    subprocess.run(f"cd {stage} && find . | cpio -o -H newc --quiet > {out}", shell=True, check=True)
    return out


def timed(cmd, **kw):
    start = time.perf_counter()
    subprocess.run(cmd, check=True, **kw)
    return time.perf_counter() - start


def qemu_base(initramfs, mode, tsc_khz):
    machine = "microvm,x-option-roms=off,rtc=on,acpi=off,pit=on,pic=on"
    if mode == "virtiofs":
        machine += ",memory-backend=mem"
    cmdline = f"console=ttyS0 reboot=t panic=-1 random.trust_cpu=on quiet tsc_early_khz={tsc_khz} tsc=reliable bench.mode={mode}"
    return ["qemu-system-x86_64", "-M", machine, "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "512M",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", os.path.join(GUEST, "vmlinux"), "-initrd", initramfs, "-append", cmdline,
            "-serial", "stdio",
            # Modern virtio-mmio: virtiofsd refuses legacy devices; the same for all ways.
            "-global", "virtio-mmio.force-legacy=false"]


def boot(mode, initramfs, tmp, tree, sqfs, tsc_khz):
    args = qemu_base(initramfs, mode, tsc_khz)
    daemon = None
    if mode == "squashfs":
        args += ["-drive", f"id=root,file={sqfs},format=raw,if=none,readonly=on", "-device", "virtio-blk-device,drive=root"]
    elif mode == "9p":
        args += ["-fsdev", f"local,id=fs0,path={tree},security_model=none,readonly=on",
                 "-device", "virtio-9p-device,fsdev=fs0,mount_tag=host"]
    else:
        sock = os.path.join(tmp, "vfs.sock")
        if os.path.exists(sock):
            os.unlink(sock)
        daemon = subprocess.Popen([VIRTIOFSD, f"--socket-path={sock}", "-o", f"source={tree}", "-o", "cache=auto"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not os.path.exists(sock):
            time.sleep(0.005)
        args += ["-object", "memory-backend-memfd,id=mem,size=512M,share=on",
                 "-chardev", f"socket,id=vfs,path={sock}", "-device", "vhost-user-fs-device,chardev=vfs,tag=host"]
    start = time.perf_counter()
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - start
    if daemon:
        daemon.wait(timeout=10)
    m = re.search(r"BENCH (\S+) ok mounted=([\d.]+) imported=([\d.]+) read=([\d.]+)", p.stdout)
    if not m:
        sys.exit(f"{mode} boot failed:\n{p.stdout[-3000:]}\n{p.stderr[-2000:]}")
    t0, t1, t2 = float(m.group(2)), float(m.group(3)), float(m.group(4))
    return wall, t1 - t0, t2 - t1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--layer", default=None)
    a = ap.parse_args()
    layer = a.layer or next(iter(sorted(glob.glob(os.path.expanduser("~/.cache/smolvm-test-fixtures/layers/python-*.tar.gz")))), None)
    if not layer:
        sys.exit("no Python fixture layer: run ./scripts/test once (the registry tests build it), or pass --layer")
    tsc = int(float(next(l.split(":")[1] for l in open("/proc/cpuinfo") if l.startswith("cpu MHz"))) * 1000)
    with tempfile.TemporaryDirectory() as tmp:
        initramfs = make_initramfs(tmp)
        sqfs, tree = os.path.join(tmp, "rootfs.sqfs"), os.path.join(tmp, "tree")
        build = [os.path.join(ROOT, "target", "release", "examples", "build_rootfs"), sqfs, layer]
        if not os.access(build[0], os.X_OK):
            subprocess.run(["cargo", "build", "--release", "-q", "-p", "smolvm-pack", "--example", "build_rootfs"], cwd=ROOT, check=True)
        prep_sqfs, prep_tree = [], []
        for _ in range(3):
            for p in (sqfs,):
                if os.path.exists(p):
                    os.unlink(p)
            shutil.rmtree(tree, ignore_errors=True)
            prep_sqfs.append(timed(build, stdout=subprocess.DEVNULL))
            os.makedirs(tree)
            prep_tree.append(timed(["tar", "-xzf", layer, "-C", tree, "--numeric-owner", "-p"]))
        tree_bytes = int(subprocess.run(["du", "-sb", tree], capture_output=True, text=True).stdout.split()[0])
        results = {m: [] for m in ["squashfs", "9p", "virtiofs"]}
        for _ in range(a.runs):
            for mode in results:
                results[mode].append(boot(mode, initramfs, tmp, tree, sqfs, tsc))
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
        print(f"root filesystem delivery, {date.today()}; {os.cpu_count()} x {cpu}; load {os.getloadavg()[0]:.2f}")
        print(f"image: {os.path.basename(layer)} ({os.path.getsize(layer) / 1e6:.1f} MB gzip, {tree_bytes / 1e6:.1f} MB extracted); "
              f"squashfs {os.path.getsize(sqfs) / 1e6:.1f} MB")
        print(f"first-run preparation on the host (median of 3):")
        print(f"  build squashfs (smolvm-pack)      {statistics.median(prep_sqfs) * 1000:8.0f} ms")
        print(f"  extract layer (GNU tar)           {statistics.median(prep_tree) * 1000:8.0f} ms")
        print(f"guest: 1 vCPU, 512 MiB, TCG; {a.runs} runs interleaved, medians (min):")
        print(f"  {'':<9} {'boot+import+read+off':>22} {'python3 import json':>22} {'read every file once':>22}")
        for mode, xs in results.items():
            cols = [[x[i] * 1000 for x in xs] for i in range(3)]
            print(f"  {mode:<9}" + "".join(f"{statistics.median(c):>14.0f} ms ({min(c):>4.0f})" for c in cols))


if __name__ == "__main__":
    main()
