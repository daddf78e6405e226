#!/usr/bin/env python3
"""Boot benchmark: `smolvm machine run -- true` against a bare QEMU boot of the same kernel,
initramfs and devices to init and power-off, in the same run.

    bench/boot.py [--runs 10] [--cpus 4] [--mem 8192]

The bare boot replays the exact QEMU command line smolvm builds (captured through a logging
wrapper), with the agent channel disconnected and init replaced by a script that runs
busybox `reboot -f`,
so the ratio measures smolvm's own cost: agent start, handshake, root setup, exec, shutdown.
Prints median/min/max wall times, their ratio, and the median of each SMOLVM_TRACE phase.
"""
import argparse, os, platform, re, shlex, statistics, subprocess, sys, tempfile, time
from datetime import date

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOLVM = os.path.join(ROOT, "target", "release", "smolvm")


def qemu_binary():
    for d in os.environ.get("PATH", "").split(":"):
        p = os.path.join(d, "qemu-system-x86_64")
        if os.access(p, os.X_OK):
            return p
    sys.exit("qemu-system-x86_64 not found: run ./scripts/setup")


def capture_qemu_args(tmp, cpus, mem):
    """Runs smolvm once through a wrapper that records QEMU's arguments."""
    log = os.path.join(tmp, "args")
    wrapper = os.path.join(tmp, "qemu-wrapper")
    with open(wrapper, "w") as f:
        f.write(f"#!/bin/sh\nprintf '%s\\0' \"$@\" > {shlex.quote(log)}\nexec {shlex.quote(qemu_binary())} \"$@\"\n")
    os.chmod(wrapper, 0o755)
    env = dict(os.environ, SMOLVM_QEMU=wrapper)
    subprocess.run([SMOLVM, "machine", "run", "--cpus", str(cpus), "--mem", str(mem), "--", "true"],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    return open(log).read().split("\0")[:-1]


def bare_initramfs(args, tmp):
    """smolvm's initramfs plus a second archive holding /bench-init, a script that powers
    off at once. (Init arguments after `--` are not an option: QEMU appends its
    virtio_mmio.device= entries to the command line, and after `--` they would go to init
    instead of registering the devices.)"""
    stage = os.path.join(tmp, "bench")
    os.makedirs(stage)
    with open(os.path.join(stage, "bench-init"), "w") as f:
        f.write("#!/rootfs/bin/busybox sh\n/rootfs/bin/busybox reboot -f\n")
    os.chmod(os.path.join(stage, "bench-init"), 0o755)
    extra = subprocess.run("cd " + shlex.quote(stage) + " && echo bench-init | cpio -o -H newc --quiet",
                           shell=True, check=True, capture_output=True).stdout
    ours = args[args.index("-initrd") + 1]
    combined = os.path.join(tmp, "bare-initramfs.cpio")
    with open(combined, "wb") as f:
        f.write(open(ours, "rb").read() + extra)
    return combined


def bare_args(args, tmp):
    """The same VM with init = /bench-init and nothing listening for an agent."""
    initramfs = bare_initramfs(args, tmp)
    out = []
    for a in args:
        if a.startswith("socket,id=agent,"):
            a = "null,id=agent"
        elif a.startswith("file,id=console,"):
            a = f"file,id=console,path={tmp}/bare-console.log"
        elif a.startswith("console="):
            # Same parameters otherwise; "Restarting system" is printed at emergency level,
            # which `quiet` still shows, so the clean power-off can be checked.
            a = a + " rdinit=/bench-init"
        elif a.endswith("initramfs.cpio"):
            a = initramfs
        out.append(a)
    return out


def timed(cmd, env=None):
    start = time.perf_counter()
    p = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = (time.perf_counter() - start) * 1000
    if p.returncode != 0:
        sys.exit(f"{cmd[0]} failed ({p.returncode}): {p.stderr[-2000:]}")
    return wall, p.stderr


TRACE = re.compile(r"^smolvm-trace\s+([\d.]+) ms  (.*)$")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--cpus", type=int, default=4)
    ap.add_argument("--mem", type=int, default=8192)
    a = ap.parse_args()
    if not os.access(SMOLVM, os.X_OK):
        sys.exit(f"{SMOLVM} missing: run ./scripts/setup")
    with tempfile.TemporaryDirectory() as tmp:
        qemu_args = capture_qemu_args(tmp, a.cpus, a.mem)
        bare = [qemu_binary()] + bare_args(qemu_args, tmp)
        smol = [SMOLVM, "machine", "run", "--cpus", str(a.cpus), "--mem", str(a.mem), "--", "true"]
        env = dict(os.environ, SMOLVM_TRACE="1")
        smol_walls, bare_walls, phases = [], [], {}
        # Interleaved, so both see the same background load.
        for _ in range(a.runs):
            w, _ = timed(bare)
            console = open(os.path.join(tmp, "bare-console.log")).read()
            if "Kernel panic" in console or "reboot: Restarting system" not in console:
                sys.exit(f"the bare boot did not reach /bench-init and power off cleanly:\n{console[-2000:]}")
            bare_walls.append(w)
            w, err = timed(smol, env)
            smol_walls.append(w)
            for line in err.splitlines():
                m = TRACE.match(line)
                if m:
                    phases.setdefault(m.group(2), []).append(float(m.group(1)))
    ver = subprocess.run([SMOLVM, "--version"], capture_output=True, text=True).stdout.strip().replace("\n", "; ")
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"boot benchmark, {date.today()}: {ver}")
    print(f"machine: {os.cpu_count()} x {cpu}, {platform.release()}; load average {os.getloadavg()[0]:.2f}")
    print(f"VM: {a.cpus} vCPU, {a.mem} MiB; {a.runs} runs each, interleaved")
    def row(name, xs):
        print(f"  {name:<34} median {statistics.median(xs):8.1f} ms   min {min(xs):8.1f}   max {max(xs):8.1f}")
    row("smolvm machine run -- true", smol_walls)
    row("bare qemu boot to init + poweroff", bare_walls)
    ratio = statistics.median(smol_walls) / statistics.median(bare_walls)
    print(f"  ratio (median smolvm / median bare) {ratio:.3f}   goal <= 1.10")
    print("host-side phases (SMOLVM_TRACE, ms since smolvm's main(), median):")
    for name, xs in sorted(phases.items(), key=lambda kv: statistics.median(kv[1])):
        print(f"  {statistics.median(xs):9.2f}  {name}")
    spawn = statistics.median(phases.get("vmm spawned", [float("nan")]))
    print(f"host overhead before the VMM starts: {spawn:.2f} ms (goal <= 10 ms)")


if __name__ == "__main__":
    main()
