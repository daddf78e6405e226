//! Volumes (`-v HOST:GUEST[:ro]`, Smolfile `[dev].volumes`) end to end: one real VM that
//! checks live sharing in both directions and read-only enforcement, plus the specs that
//! must be refused before any VM starts.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;

/// The guest's side of the conversation: it reports on stdout, waits for the host between
/// steps, and reads the host's answers from stdin.
const GUEST_SCRIPT: &str = r#"
echo from-guest > /work/guest.txt && echo step wrote
read line; echo "step host-file $(cat /work/host.txt)"
echo "step ro-read $(cat /ro/hello.txt)"
touch /ro/new.txt 2>&1 | sed 's/^/step ro-touch /'
mount -o remount,rw /ro; echo "step remount $?"
touch /ro/new.txt 2>&1 | sed 's/^/step ro-after-remount /'
echo "step mounts $(grep -c ' 9p ' /proc/mounts)"
"#;

#[test]
fn volumes_share_host_directories_live_and_enforce_read_only() {
    let dir = tempdir();
    let (rw, proj) = (dir.path().join("rw"), dir.path().join("proj"));
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::create_dir_all(proj.join("ro")).unwrap();
    std::fs::write(proj.join("ro/hello.txt"), "hello-from-host\n").unwrap();
    // The Smolfile's volume is relative to the Smolfile; the -v flag's to the working directory.
    std::fs::write(
        proj.join("Smolfile"),
        "[dev]\nvolumes = [\"./ro:/ro:ro\"]\n",
    )
    .unwrap();
    let mut child = smolvm(dir.path())
        .current_dir(dir.path())
        .args(["machine", "run", "--cpus", "1", "--mem", "512", "-i"])
        .args(["-s", "proj/Smolfile", "-v", "rw:/work"])
        .args(["--", "sh", "-c", GUEST_SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || {
        lines
            .next()
            .map(|l| l.unwrap())
            .unwrap_or_else(|| panic!("the guest stopped talking"))
    };

    // Guest -> host, while the VM is still running.
    assert_eq!(next(), "step wrote");
    assert_eq!(
        std::fs::read_to_string(rw.join("guest.txt")).unwrap(),
        "from-guest\n"
    );
    // Host -> guest: a file created now is seen at once.
    std::fs::write(rw.join("host.txt"), "from-host").unwrap();
    writeln!(stdin, "go").unwrap();
    assert_eq!(next(), "step host-file from-host");

    assert_eq!(next(), "step ro-read hello-from-host");
    // EROFS, as the guest's mount is read-only.
    assert_eq!(
        next(),
        "step ro-touch touch: /ro/new.txt: Read-only file system"
    );
    // Root in the guest can remount it read-write, but the VMM still refuses the write.
    assert_eq!(next(), "step remount 0");
    assert_eq!(
        next(),
        "step ro-after-remount touch: /ro/new.txt: Read-only file system"
    );
    assert_eq!(next(), "step mounts 2");
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(
        !proj.join("ro/new.txt").exists(),
        "nothing was written to the read-only host directory"
    );
}

/// A spec that must fail before a VM starts: QEMU is a script that leaves a mark if run.
fn refused_before_boot(dir: &Path, volume: &str) -> (Option<i32>, String) {
    let qemu = dir.join("qemu");
    let marker = dir.join("qemu-ran");
    std::fs::write(&qemu, format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&qemu, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = smolvm(dir)
        .current_dir(dir)
        .env("SMOLVM_QEMU", &qemu)
        .args([
            "machine",
            "run",
            "--backend",
            "qemu",
            "-v",
            volume,
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert!(!marker.exists(), "{volume}: a VM was started");
    (out.status.code(), stderr(&out))
}

#[test]
fn bad_volume_specs_are_refused_before_boot_with_the_reason() {
    let dir = tempdir();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("file"), "x").unwrap();

    let (code, err) = refused_before_boot(dir.path(), "data:relative");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("expected an absolute guest path, found \"relative\""),
        "{err}"
    );

    let (code, err) = refused_before_boot(dir.path(), "data:/proc/x");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("expected a guest path outside /proc, /sys and /dev"),
        "{err}"
    );

    let (code, err) = refused_before_boot(dir.path(), "missing:/data");
    assert_eq!(code, Some(125), "{err}");
    let missing = dir.path().join("missing");
    assert!(
        err.contains(&format!(
            "volume missing:/data: the host directory {} does not exist; create it",
            missing.display()
        )),
        "{err}"
    );

    let (code, err) = refused_before_boot(dir.path(), "file:/data:ro");
    assert_eq!(code, Some(125), "{err}");
    assert!(err.contains("is not a directory"), "{err}");
}
