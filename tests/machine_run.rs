//! `smolvm machine run` end to end: real VMs, the real agent, the real CLI.

mod common;
use common::*;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn echo_with_default_resources_exits_zero() {
    let dir = tempdir();
    // Default resources (4 vCPUs, 8 GiB): the configuration users get.
    let out = smolvm(dir.path())
        .args(["machine", "run", "--", "echo", "hello"])
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "hello\n", "stderr: {}", stderr(&out));
    assert_eq!(out.status.code(), Some(0));
    // The VM's runtime directory is gone afterwards.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("smolvm"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn exit_codes_and_separate_stderr() {
    let dir = tempdir();
    let out = run_vm(
        dir.path(),
        &["--", "sh", "-c", "echo to-out; echo to-err >&2; exit 42"],
    );
    assert_eq!(out.status.code(), Some(42));
    assert_eq!(stdout(&out), "to-out\n");
    assert_eq!(stderr(&out), "to-err\n");

    let out = run_vm(dir.path(), &["--", "false"]);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
}

#[test]
fn death_by_signal_is_128_plus_the_signal() {
    let dir = tempdir();
    let out = run_vm(dir.path(), &["--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(143), "stderr: {}", stderr(&out));
}

#[test]
fn env_and_workdir_reach_the_command() {
    let dir = tempdir();
    let out = run_vm(
        dir.path(),
        &[
            "-e",
            "FOO=bar baz",
            "-e",
            "EMPTY=",
            "-e",
            "EQ=a=b",
            "-w",
            "/tmp/made/here",
            "--",
            "sh",
            "-c",
            "echo \"$FOO|$EMPTY|$EQ\"; pwd; echo $HOME; echo $PATH",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "bar baz||a=b");
    assert_eq!(
        lines[1], "/tmp/made/here",
        "a missing workdir is created, as docker run -w does"
    );
    assert_eq!(lines[2], "/root");
    assert!(lines[3].contains("/usr/bin"), "default PATH: {}", lines[3]);
}

#[test]
fn piped_stdin_arrives_intact() {
    let dir = tempdir();
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let want = hex(&Sha256::digest(&data));
    let mut child = smolvm(dir.path())
        .args([
            "machine",
            "run",
            "--cpus",
            "1",
            "--mem",
            "512",
            "-i",
            "--",
            "sha256sum",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out).split_whitespace().next(), Some(want.as_str()));
}

#[test]
fn hundred_megabytes_of_stdout_arrive_intact() {
    let dir = tempdir();
    // The guest hashes what it sends (on stderr) and the host hashes what it receives.
    let script =
        "head -c 104857600 /dev/urandom > /tmp/blob && sha256sum /tmp/blob >&2 && cat /tmp/blob";
    let out = smolvm(dir.path())
        .args([
            "machine", "run", "--cpus", "1", "--mem", "1024", "--", "sh", "-c", script,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(out.stdout.len(), 104_857_600);
    let guest_hash = stderr(&out)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(hex(&Sha256::digest(&out.stdout)), guest_hash);
}

#[test]
fn timeout_kills_the_command_and_exits_124() {
    let dir = tempdir();
    let start = Instant::now();
    let out = run_vm(
        dir.path(),
        &[
            "--timeout",
            "2s",
            "--",
            "sh",
            "-c",
            "echo started; sleep 60; echo never",
        ],
    );
    assert_eq!(out.status.code(), Some(124), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "started\n");
    assert!(
        stderr(&out).contains("timed out after 2s"),
        "{}",
        stderr(&out)
    );
    assert!(
        start.elapsed() < Duration::from_secs(40),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn missing_and_unexecutable_commands_exit_like_a_shell() {
    let dir = tempdir();
    let out = run_vm(dir.path(), &["--", "no-such-command", "arg"]);
    assert_eq!(out.status.code(), Some(127));
    assert_eq!(
        stderr(&out),
        "smolvm: no-such-command: command not found in PATH\n"
    );

    let out = run_vm(dir.path(), &["--", "/etc/passwd"]);
    assert_eq!(out.status.code(), Some(126));
    assert!(
        stderr(&out).contains("/etc/passwd: permission denied"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn sigterm_to_smolvm_reaches_the_guest_process() {
    let dir = tempdir();
    let mut child = smolvm(dir.path())
        .args([
            "machine",
            "run",
            "--cpus",
            "1",
            "--mem",
            "512",
            "--",
            "sh",
            "-c",
            "trap 'echo got-TERM; exit 3' TERM; echo ready; while :; do sleep 1; done",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(lines.next().unwrap().unwrap(), "got-TERM");
    assert_eq!(child.wait().unwrap().code(), Some(3));
}

#[test]
fn killing_smolvm_leaves_nothing_running_and_its_directory_is_swept() {
    let dir = tempdir();
    let mut child = smolvm(dir.path())
        .args([
            "machine",
            "run",
            "--cpus",
            "1",
            "--mem",
            "512",
            "--",
            "sh",
            "-c",
            "echo ready; sleep 120",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let vmm = children(child.id());
    assert_eq!(vmm.len(), 1, "one VMM process expected, found {vmm:?}");
    child.kill().unwrap();
    child.wait().unwrap();
    // The VMM dies with its parent (PR_SET_PDEATHSIG), even on SIGKILL.
    assert!(
        wait_for(10, || !alive(vmm[0])),
        "VMM {} outlived smolvm",
        vmm[0]
    );
    let base = dir.path().join("smolvm");
    assert_eq!(
        std::fs::read_dir(&base).unwrap().count(),
        1,
        "the killed run's directory remains until swept"
    );
    // The next run sweeps it.
    let out = run_vm(dir.path(), &["--", "true"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        std::fs::read_dir(&base).unwrap().count(),
        0,
        "stale directory not swept"
    );
}

#[test]
fn a_vmm_that_dies_mid_run_is_reported() {
    let dir = tempdir();
    let mut child = smolvm(dir.path())
        .args([
            "machine",
            "run",
            "--cpus",
            "1",
            "--mem",
            "512",
            "--",
            "sh",
            "-c",
            "echo ready; sleep 120",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let vmm = children(child.id());
    // SAFETY: signalling the VMM our child started.
    unsafe { libc::kill(vmm[0] as i32, libc::SIGKILL) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = stderr(&out);
    assert!(
        err.contains("the connection to the VM closed before the command finished"),
        "{err}"
    );
    assert!(err.contains("exited (signal: 9"), "{err}");
}

#[test]
fn smolfile_supplies_init_env_and_command() {
    let dir = tempdir();
    let smolfile = dir.path().join("Smolfile");
    std::fs::write(
        &smolfile,
        "cpus = 1\nmemory = 512\nenv = [\"GREETING=hi\"]\ncmd = [\"sh\", \"-c\", \"cat /tmp/marker; echo $GREETING\"]\n\n[dev]\ninit = [\"echo init-ran > /tmp/marker\"]\n",
    )
    .unwrap();
    let out = smolvm(dir.path())
        .args(["machine", "run", "-s"])
        .arg(&smolfile)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "init-ran\nhi\n");

    std::fs::write(&smolfile, "cpus = 99\nmemroy = 1\n").unwrap();
    let out = smolvm(dir.path())
        .args(["machine", "run", "-s"])
        .arg(&smolfile)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = stderr(&out);
    assert!(err.contains(":1:8: cpus: "), "{err}");
    assert!(err.contains("did you mean \"memory\"?"), "{err}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
