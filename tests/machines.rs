//! Persistent machines end to end: the real `smolvm` binary creates, starts, execs in,
//! stops, kills and deletes machines that boot real microVMs.

mod common;
use common::*;
use smolvm_registry::testutil::{self, Format, Security, TestRegistry};
use std::path::PathBuf;
use std::process::{Output, Stdio};

const SMALL: [&str; 4] = ["--cpus", "1", "--mem", "512"];

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

#[test]
fn a_bare_machine_keeps_its_files_across_execs_restarts_and_a_killed_supervisor() {
    let home = Home::new();
    let mut create = vec!["machine", "create", "box"];
    create.extend(SMALL);
    create.extend([
        "-e",
        "FROM_CREATE=yes",
        "--init",
        "echo booted >> /var/boots",
    ]);
    assert!(home.ok(&create).contains("created machine box"));
    let ls = home.ok(&["machine", "ls"]);
    assert!(ls.contains("box") && ls.contains("stopped"), "{ls}");
    // Observational commands never start anything.
    let exec_stopped = home.cmd(&["machine", "exec", "-n", "box", "--", "true"]);
    assert_ne!(code(&exec_stopped), Some(0));
    assert!(
        stderr(&exec_stopped).contains("smolvm machine start --name box"),
        "{}",
        stderr(&exec_stopped)
    );

    home.ok(&["machine", "start", "--name", "box"]);
    let again = home.cmd(&["machine", "start", "--name", "box"]);
    assert!(
        stderr(&again).contains("already running"),
        "{}",
        stderr(&again)
    );
    // A package-install-like change (a program under /usr), a config edit under /etc, and
    // a file in /workspace; the machine's environment reaches commands.
    home.sh("box", "mkdir -p /usr/local/bin && printf '#!/bin/sh\\necho tool-$1\\n' > /usr/local/bin/tool \
         && chmod 755 /usr/local/bin/tool && echo edited > /etc/motd && echo kept > /workspace/data");
    let env = home.ok(&[
        "machine",
        "exec",
        "-n",
        "box",
        "-e",
        "X=1",
        "--",
        "sh",
        "-c",
        "echo $FROM_CREATE$X",
    ]);
    assert_eq!(env.trim(), "yes1");
    let failed = home.cmd(&["machine", "exec", "-n", "box", "--", "sh", "-c", "exit 7"]);
    assert_eq!(code(&failed), Some(7));

    // Many concurrent execs on one machine.
    let execs: Vec<_> = (0..8)
        .map(|i| {
            home.smolvm()
                .args(["machine", "exec", "-n", "box", "--", "sh", "-c"])
                .arg(format!(
                    "echo exec-{i} > /workspace/c{i}; cat /workspace/c{i}"
                ))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, child) in execs.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert_eq!(stdout(&out).trim(), format!("exec-{i}"), "{}", stderr(&out));
    }

    // Memory the guest frees goes back to the host (virtio-balloon free page reporting).
    let vmm = children(supervisor_pid(&home, "box"))[0];
    home.ok(&[
        "machine",
        "exec",
        "-n",
        "box",
        "--",
        "dd",
        "if=/dev/urandom",
        "of=/run/big",
        "bs=1M",
        "count=200",
    ]);
    let peak = rss_kib(vmm);
    home.ok(&["machine", "exec", "-n", "box", "--", "rm", "/run/big"]);
    assert!(
        wait_for(20, || rss_kib(vmm) + 120 * 1024 < peak),
        "the VMM kept the freed memory: {peak} KiB then {} KiB",
        rss_kib(vmm)
    );

    // Stop, grow the disk, start: everything is still there, on a bigger /workspace.
    assert!(
        home.ok(&["machine", "stop", "-n", "box"])
            .contains("stopped")
    );
    let shrink = home.cmd(&["machine", "resize", "-n", "box", "--storage", "1"]);
    assert!(
        stderr(&shrink).contains("disks only grow"),
        "{}",
        stderr(&shrink)
    );
    home.ok(&["machine", "resize", "-n", "box", "--storage", "30"]);
    home.ok(&["machine", "start", "-n", "box"]);
    let seen = home.sh(
        "box",
        "tool x; cat /etc/motd /workspace/data /workspace/c3; wc -l < /var/boots; \
         df -k /workspace | tail -1 | awk '{print $2}'",
    );
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(
        lines[..5],
        ["tool-x", "edited", "kept", "exec-3", "2"],
        "{seen}"
    );
    let kib: u64 = lines[5].trim().parse().unwrap();
    assert!(kib > 25 << 20, "/workspace was not grown: {kib} KiB");

    // kill -9 of the supervisor: the VM dies with it, the machine shows as stopped, and it
    // starts again with its data (the overlay's journal replays).
    let pid = supervisor_pid(&home, "box");
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert!(wait_for(20, || {
        home.ok(&["machine", "status", "-n", "box"])
            .contains("state:     stopped")
    }));
    home.ok(&["machine", "start", "-n", "box"]);
    let after = home.ok(&[
        "machine",
        "exec",
        "-n",
        "box",
        "--",
        "cat",
        "/workspace/data",
    ]);
    assert_eq!(after.trim(), "kept");

    // delete refuses a running machine without -f; with it, every file it owned is gone.
    let refused = home.cmd(&["machine", "delete", "box"]);
    assert!(stderr(&refused).contains("-f"), "{}", stderr(&refused));
    let pid = supervisor_pid(&home, "box");
    home.ok(&["machine", "delete", "box", "-f"]);
    assert!(!machine_dir(&home, "box").exists());
    assert!(wait_for(10, || !alive(pid)));
    let sockets: Vec<_> = std::fs::read_dir(home.dir.path().join("run"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("smolvm"))
        .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten().flatten())
        .filter(|e| e.file_name().to_string_lossy().starts_with("machine-"))
        .collect();
    assert!(sockets.is_empty(), "{sockets:?}");
    assert_eq!(home.ok(&["machine", "ls", "--json"]).trim(), "[]");
}

#[test]
fn image_and_pack_machines_persist_changes_over_their_read_only_root() {
    let home = Home::new();
    let reg = TestRegistry::start(Security::Plain).expect("docker-registry starts");
    std::fs::create_dir_all(home.config_file().parent().unwrap()).unwrap();
    reg.write_config(&home.config_file());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(testutil::push_image(
        &reg,
        "fixtures/busybox:1",
        &testutil::busybox().unwrap(),
        Format::Oci,
    ))
    .unwrap();
    let image = format!("{}/fixtures/busybox:1", reg.host());

    let mut create = vec!["machine", "create", "img", "-q", "-I", &image];
    create.extend(SMALL);
    home.ok(&create);
    // The machine owns its root filesystem: pruning the image cache does not break it.
    home.ok(&["machine", "prune"]);
    home.ok(&["machine", "start", "-n", "img"]);
    // The image's user cannot write /usr; root can, and removes a file of the image.
    let denied = home.cmd(&["machine", "exec", "-n", "img", "--", "touch", "/usr/x"]);
    assert_ne!(code(&denied), Some(0));
    home.ok(&[
        "machine",
        "exec",
        "-n",
        "img",
        "-u",
        "root",
        "--",
        "sh",
        "-c",
        "echo $GREETING-from-root > /usr/greeting && rm /etc/group",
    ]);
    home.ok(&["machine", "stop", "-n", "img"]);
    home.ok(&["machine", "start", "-n", "img"]);
    let seen = home.cmd(&[
        "machine",
        "exec",
        "-n",
        "img",
        "--",
        "sh",
        "-c",
        "cat /usr/greeting; test -e /etc/group && echo still-there; id -u; exit 3",
    ]);
    assert_eq!(code(&seen), Some(3));
    assert_eq!(
        stdout(&seen),
        "hello-from-root\n1000\n",
        "{}",
        stderr(&seen)
    );

    // The machine as it is now, packed: its changes are in the executable's root.
    let snap = home.dir.path().join("snap");
    home.ok(&[
        "pack",
        "create",
        "-q",
        "--from-vm",
        "img",
        "-o",
        snap.to_str().unwrap(),
    ]);
    let mut app = std::process::Command::new(&snap);
    for (k, v) in home.smolvm().get_envs() {
        match v {
            Some(v) => app.env(k, v),
            None => app.env_remove(k),
        };
    }
    let ran = app
        .args(["run", "--cpus", "1", "--mem", "512", "--", "sh", "-c"])
        .arg("cat /usr/greeting; test -e /etc/group || echo group-gone; echo $GREETING; id -u")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        stdout(&ran),
        "hello-from-root\ngroup-gone\nhello\n1000\n",
        "{}",
        stderr(&ran)
    );
    home.ok(&["machine", "delete", "-f", "img"]);

    // A machine from a .smolmachine uses the pack's sections (no registry needed).
    let apps = home.dir.path().join("apps");
    std::fs::create_dir_all(&apps).unwrap();
    let exe = apps.join("bb");
    home.ok(&[
        "pack",
        "create",
        "-q",
        "-I",
        &image,
        "-o",
        exe.to_str().unwrap(),
    ]);
    let sidecar = apps.join("bb.smolmachine");
    // Through a registry: push the pack, create a machine from its reference, use it.
    let pushed = format!("{}/packs/bb:1", reg.host());
    home.ok(&["pack", "push", "-q", sidecar.to_str().unwrap(), &pushed]);
    let mut by_ref = vec!["machine", "create", "pulled", "-q", "--from", &pushed];
    by_ref.extend(SMALL);
    home.ok(&by_ref);
    drop(reg);
    home.ok(&["machine", "start", "-n", "pulled"]);
    let out = home.sh("pulled", "echo $GREETING");
    assert_eq!(out, "hello\n");
    home.ok(&["machine", "delete", "-f", "pulled"]);
    let mut from = vec![
        "machine",
        "create",
        "packed",
        "--from",
        sidecar.to_str().unwrap(),
    ];
    from.extend(SMALL);
    home.ok(&from);
    let status: serde_json::Value =
        serde_json::from_str(&home.ok(&["machine", "status", "-n", "packed", "--json"])).unwrap();
    assert_eq!(status["cpus"], 1);
    assert!(
        status["source"].as_str().unwrap().starts_with("pack "),
        "{status}"
    );
    home.ok(&["machine", "start", "-n", "packed"]);
    let out = home.sh("packed", "echo $GREETING; hostname");
    assert_eq!(out, "hello\npacked\n");
    home.ok(&["machine", "delete", "-f", "packed"]);
}

#[test]
fn sixteen_concurrent_lifecycle_commands_on_different_machines_all_succeed() {
    let home = Home::new();
    let names: Vec<String> = (0..16).map(|i| format!("m{i:02}")).collect();
    // One command per name, all at once; every child ends before any assertion, so a
    // failure does not remove the home under the others and blame them for it.
    let parallel = |names: &[String], args: &[&str]| {
        let children: Vec<_> = names
            .iter()
            .map(|n| {
                home.smolvm()
                    .args(
                        args.iter()
                            .map(|a| if *a == "NAME" { n.as_str() } else { *a }),
                    )
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outs: Vec<_> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        for (n, out) in names.iter().zip(outs) {
            assert_eq!(code(&out), Some(0), "{n}: {}", stderr(&out));
        }
    };
    parallel(
        &names,
        &["machine", "create", "NAME", "--cpus", "1", "--mem", "256"],
    );
    assert_eq!(home.ok(&["machine", "ls"]).matches("stopped").count(), 16);
    // Four at a time boot (TCG on two cores) and run a command; `delete -f` stops them.
    for chunk in names.chunks(4) {
        parallel(chunk, &["machine", "start", "-n", "NAME"]);
        for n in chunk {
            assert_eq!(
                home.ok(&["machine", "exec", "-n", n, "--", "hostname"])
                    .trim(),
                n
            );
        }
    }
    parallel(&names, &["machine", "delete", "-f", "NAME"]);
    assert_eq!(home.ok(&["machine", "ls", "--json"]).trim(), "[]");
    let left: Vec<_> = std::fs::read_dir(home.dir.path().join("data/smolvm/machines"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn bad_names_unknown_machines_and_bad_sizes_are_refused_with_the_rule() {
    let home = Home::new();
    let bad = home.cmd(&["machine", "create", "../etc"]);
    assert_eq!(code(&bad), Some(125));
    assert!(
        stderr(&bad).contains("ASCII letters, digits, '-' and '_'"),
        "{}",
        stderr(&bad)
    );
    let long = "x".repeat(65);
    assert!(stderr(&home.cmd(&["machine", "create", &long])).contains("too long"));
    let unknown = home.cmd(&["machine", "start", "-n", "ghost"]);
    assert!(
        stderr(&unknown).contains("no machine named \"ghost\""),
        "{}",
        stderr(&unknown)
    );
    let cpus = home.cmd(&["machine", "create", "c", "--cpus", "0"]);
    assert!(stderr(&cpus).contains("--cpus 0"), "{}", stderr(&cpus));
    home.ok(&["machine", "create", "one"]);
    let dup = home.cmd(&["machine", "create", "one"]);
    assert!(stderr(&dup).contains("already exists"), "{}", stderr(&dup));
    let nothing = home.cmd(&["machine", "resize", "-n", "one"]);
    assert!(stderr(&nothing).contains("nothing to resize"));
    // The default name.
    home.ok(&["machine", "create"]);
    assert!(
        home.ok(&["machine", "status"])
            .contains("name:      default")
    );
    assert!(home.ok(&["machine", "stop"]).contains("not running"));
}

#[test]
fn monitor_restarts_a_machine_whose_health_check_fails() {
    use std::io::{BufRead, BufReader};
    let home = Home::new();
    let smolfile = home.dir.path().join("Smolfile");
    std::fs::write(
        &smolfile,
        r#"cpus = 1
memory = 512

[dev]
init = ["echo boot >> /workspace/boots"]

[health]
exec = ["sh", "-c", "! test -e /run/broken"]
interval = "1s"
timeout = "10s"
retries = 2

[restart]
policy = "on-failure"
max_backoff = "1s"
"#,
    )
    .unwrap();
    home.ok(&["machine", "create", "svc", "-s", smolfile.to_str().unwrap()]);
    // The monitor starts the machine itself (it was never stopped by the user).
    let mut child = home
        .smolvm()
        .args(["machine", "monitor", "-n", "svc"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let mut expect = |what: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        while let Ok(line) =
            rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
        {
            seen.push(line.clone());
            if line.contains(what) {
                return;
            }
        }
        panic!(
            "the monitor never said {what:?}; it said:\n{}",
            seen.join("\n")
        );
    };
    expect("machine svc: started");
    expect("machine svc: healthy");
    home.ok(&["machine", "exec", "-n", "svc", "--", "touch", "/run/broken"]);
    expect("health check failed (1 in a row): the check exited with 1");
    expect("unhealthy");
    expect("restarting");
    expect("machine svc: started");
    expect("machine svc: healthy");
    let boots = home.ok(&[
        "machine",
        "exec",
        "-n",
        "svc",
        "--",
        "cat",
        "/workspace/boots",
    ]);
    assert_eq!(boots, "boot\nboot\n");
    // A stop the user asks for is respected: the monitor reports it and ends.
    home.ok(&["machine", "stop", "-n", "svc"]);
    expect("stopped (by `machine stop`)");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        home.ok(&["machine", "status", "-n", "svc"])
            .contains("stopped")
    );
}

#[test]
fn cp_and_volumes_move_files_through_a_machine_and_an_interrupted_copy_changes_nothing() {
    use sha2::{Digest, Sha256};
    let hex = |bytes: &[u8]| -> String {
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let home = Home::new();
    let shared = home.dir.path().join("shared");
    let ro = home.dir.path().join("ro");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::write(ro.join("r"), "read me").unwrap();
    let (v_rw, v_ro) = (
        format!("{}:/shared", shared.display()),
        format!("{}:/ro:ro", ro.display()),
    );
    let mut create = vec!["machine", "create", "cpbox", "-v", &v_rw, "-v", &v_ro];
    create.extend(SMALL);
    home.ok(&create);
    home.ok(&["machine", "start", "-n", "cpbox"]);
    // Volumes: live both ways, read-only enforced.
    home.sh("cpbox", "echo from-guest > /shared/g");
    assert_eq!(
        std::fs::read_to_string(shared.join("g")).unwrap(),
        "from-guest\n"
    );
    std::fs::write(shared.join("h"), "from-host").unwrap();
    let seen = home.cmd(&[
        "machine",
        "exec",
        "-n",
        "cpbox",
        "--",
        "sh",
        "-c",
        "cat /shared/h /ro/r; echo; touch /ro/x",
    ]);
    assert_ne!(code(&seen), Some(0));
    assert_eq!(stdout(&seen), "from-hostread me\n");
    assert!(
        stderr(&seen).contains("Read-only file system"),
        "{}",
        stderr(&seen)
    );
    assert!(!ro.join("x").exists());
    let host = home.dir.path().join("files");
    std::fs::create_dir_all(host.join("tree/sub")).unwrap();
    // 64 MiB of incompressible data (the engine's own test moves 200 MB both ways).
    let mut data = vec![0u8; 64 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let big = host.join("big.bin");
    std::fs::write(&big, &data).unwrap();
    std::fs::set_permissions(&big, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    std::fs::write(host.join("tree/sub/a.txt"), "a").unwrap();
    std::os::unix::fs::symlink("sub/a.txt", host.join("tree/link")).unwrap();

    home.ok(&[
        "machine",
        "cp",
        "-q",
        big.to_str().unwrap(),
        "cpbox:/workspace/big.bin",
    ]);
    let inside = home.sh(
        "cpbox",
        "sha256sum /workspace/big.bin | cut -d' ' -f1; stat -c %a /workspace/big.bin",
    );
    let want = hex(&data);
    assert_eq!(inside, format!("{want}\n640\n"));
    let back = host.join("back.bin");
    home.ok(&[
        "machine",
        "cp",
        "-q",
        "cpbox:/workspace/big.bin",
        back.to_str().unwrap(),
    ]);
    assert_eq!(hex(&std::fs::read(&back).unwrap()), want);

    let no_r = home.cmd(&[
        "machine",
        "cp",
        host.join("tree").to_str().unwrap(),
        "cpbox:/workspace/t",
    ]);
    assert!(stderr(&no_r).contains("-r"), "{}", stderr(&no_r));
    home.ok(&[
        "machine",
        "cp",
        "-r",
        "-q",
        host.join("tree").to_str().unwrap(),
        "cpbox:/workspace/t",
    ]);
    let tree_back = host.join("tree-back");
    home.ok(&[
        "machine",
        "cp",
        "-r",
        "-q",
        "cpbox:/workspace/t",
        tree_back.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(tree_back.join("sub/a.txt")).unwrap(),
        "a"
    );
    assert_eq!(
        std::fs::read_link(tree_back.join("link")).unwrap(),
        PathBuf::from("sub/a.txt")
    );

    // A copy killed mid-way (SIGKILL: no chance to clean up) leaves the old destination and
    // no staging file in the machine: the supervisor cancels it for the vanished client.
    home.sh("cpbox", "echo old > /workspace/dst");
    let mut child = home
        .smolvm()
        .args([
            "machine",
            "cp",
            "-q",
            big.to_str().unwrap(),
            "cpbox:/workspace/dst",
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        wait_for(15, || {
            home.ok(&[
                "machine",
                "exec",
                "-n",
                "cpbox",
                "--",
                "ls",
                "-A",
                "/workspace",
            ]) == "big.bin\ndst\nlost+found\nt\n"
        }),
        "{}",
        home.ok(&[
            "machine",
            "exec",
            "-n",
            "cpbox",
            "--",
            "ls",
            "-A",
            "/workspace"
        ])
    );
    assert_eq!(
        home.ok(&[
            "machine",
            "exec",
            "-n",
            "cpbox",
            "--",
            "cat",
            "/workspace/dst"
        ]),
        "old\n"
    );

    let both = home.cmd(&["machine", "cp", "cpbox:/a", "cpbox:/b"]);
    assert!(stderr(&both).contains("two steps"));
    let neither = home.cmd(&["machine", "cp", "a", "b"]);
    assert!(
        stderr(&neither).contains("NAME:/absolute/path"),
        "{}",
        stderr(&neither)
    );
    home.ok(&["machine", "delete", "-f", "cpbox"]);
}
