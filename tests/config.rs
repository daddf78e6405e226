//! `smolvm config registries edit|list`, `login`, `logout`: no VM needed.

mod common;
use common::*;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

/// An $EDITOR that replaces the file it is given with `content`.
fn editor(home: &Home, name: &str, content: &str) -> std::path::PathBuf {
    let script = home.dir.path().join(name);
    let body = home.dir.path().join(format!("{name}.content"));
    std::fs::write(&body, content).unwrap();
    std::fs::write(
        &script,
        format!("#!/bin/sh\ncp '{}' \"$1\"\n", body.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

#[test]
fn edit_saves_only_a_valid_config_and_keeps_the_draft_otherwise() {
    let home = Home::new();
    let good =
        "[registries.\"registry.example.com\"]\nusername = \"alice\"\npassword = \"s3cret\"\n";
    let out = home
        .smolvm()
        .env("EDITOR", editor(&home, "good", good))
        .args(["config", "registries", "edit"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(home.config_file()).unwrap(), good);
    assert_eq!(
        std::fs::metadata(home.config_file())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // An invalid edit leaves the working config untouched and says where the draft is.
    let bad = "[registries.\"registry.example.com\"]\ninsecure = \"yes\"\n";
    let out = home
        .smolvm()
        .env("EDITOR", editor(&home, "bad", bad))
        .args(["config", "registries", "edit"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("registries.\"registry.example.com\".insecure: expected true or false"),
        "{err}"
    );
    assert!(err.contains("is unchanged; your draft is"), "{err}");
    assert_eq!(std::fs::read_to_string(home.config_file()).unwrap(), good);

    let list = home
        .smolvm()
        .args(["config", "registries", "list"])
        .output()
        .unwrap();
    let text = stdout(&list);
    assert!(
        text.contains("registry.example.com") && text.contains("alice"),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "the password was printed: {text}");
}

#[test]
fn login_reads_the_password_from_stdin_and_logout_forgets_it() {
    let home = Home::new();
    let mut login = home
        .smolvm()
        .args(["login", "127.0.0.1:5000", "-u", "bob"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    login.stdin.take().unwrap().write_all(b"hunter2\n").unwrap();
    let out = login.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("hunter2"));
    let text = std::fs::read_to_string(home.config_file()).unwrap();
    assert!(
        text.contains("\"127.0.0.1:5000\"") && text.contains("bob") && text.contains("hunter2"),
        "{text}"
    );
    assert_eq!(
        std::fs::metadata(home.config_file())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    let out = home
        .smolvm()
        .args(["logout", "127.0.0.1:5000"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(home.config_file()).unwrap();
    assert!(!text.contains("hunter2") && !text.contains("bob"), "{text}");

    // Without -u and without a terminal there is no way to ask: a clear error.
    let out = home
        .smolvm()
        .args(["login", "127.0.0.1:5000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("give the username with -u"),
        "{}",
        stderr(&out)
    );
}
