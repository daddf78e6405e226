//! Backend choice and the "no usable virtualization" paths. These need no VM boot: they
//! simulate hosts without KVM or without QEMU through SMOLVM_KVM_DEVICE and SMOLVM_QEMU.

mod common;
use common::*;

#[test]
fn krun_without_kvm_says_why_and_what_to_do() {
    let dir = tempdir();
    let out = smolvm(dir.path())
        .env("SMOLVM_KVM_DEVICE", "/nonexistent/kvm")
        .args(["machine", "run", "--backend", "krun", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = stderr(&out);
    assert!(
        err.contains("the krun backend needs hardware virtualization"),
        "{err}"
    );
    assert!(err.contains("/nonexistent/kvm does not exist"), "{err}");
    assert!(err.contains("modprobe kvm_intel"), "{err}");
    assert!(err.contains("--backend qemu"), "{err}");
}

#[test]
fn no_backend_at_all_names_both_causes() {
    let dir = tempdir();
    let out = smolvm(dir.path())
        .env("SMOLVM_KVM_DEVICE", "/nonexistent/kvm")
        .env("SMOLVM_QEMU", "/nonexistent/qemu")
        .args(["machine", "run", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = stderr(&out);
    assert!(err.contains("no VM backend can run on this host"), "{err}");
    assert!(
        err.contains("krun: /nonexistent/kvm does not exist"),
        "{err}"
    );
    assert!(
        err.contains("qemu: SMOLVM_QEMU=/nonexistent/qemu is not an executable file"),
        "{err}"
    );
    assert!(err.contains("apt-get install qemu-system-x86"), "{err}");
}

#[test]
fn a_device_that_is_not_kvm_is_explained() {
    let dir = tempdir();
    let out = smolvm(dir.path())
        .env("SMOLVM_KVM_DEVICE", "/dev/null")
        .args(["machine", "run", "--backend", "krun", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("/dev/null is not a KVM device"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn version_lists_the_usable_backends() {
    let dir = tempdir();
    let out = smolvm(dir.path()).arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!("smolvm {}\n", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(
        text.contains("backends: ") && text.contains("qemu ("),
        "{text}"
    );
}

#[test]
fn bad_flags_are_rejected_before_any_vm_starts() {
    let dir = tempdir();
    let out = smolvm(dir.path())
        .args(["machine", "run", "--cpus", "0", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("--cpus 0 is out of range: a VM has 1 to 32 vCPUs"),
        "{}",
        stderr(&out)
    );
    let out = run_vm(dir.path(), &["-e", "1BAD=x", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("-e: expected KEY=VALUE"),
        "{}",
        stderr(&out)
    );
    let out = run_vm(dir.path(), &["--timeout", "soon", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "clap usage errors exit 2");
    assert!(
        stderr(&out).contains("expected a duration like 10s"),
        "{}",
        stderr(&out)
    );
}
