//! `smolvm machine run -it` on a real terminal (tmux): a PTY in the guest, window size and
//! resizes, Ctrl-C going to the guest's foreground process, and the exit status.

mod common;
use common::*;
use std::process::Command;

struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux is installed (apt-get install tmux)")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "t"]).stdout).into_owned()
    }

    fn send(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        assert!(self.cmd(&args).status.success());
    }

    /// Waits for `text` on screen; panics with the screen when it does not come.
    fn expect(&self, text: &str) {
        if !wait_for(60, || self.screen().contains(text)) {
            panic!("{text:?} never appeared; screen:\n{}", self.screen());
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.cmd(&["kill-server"]);
    }
}

#[test]
fn interactive_shell_on_a_real_terminal() {
    let dir = tempdir();
    require_vm_prerequisites();
    let tmux = Tmux {
        socket: format!("smolvm-test-{}", std::process::id()),
    };
    let shell = format!(
        "XDG_RUNTIME_DIR={} {} machine run --cpus 1 --mem 512 -it; echo EXIT:$?; sleep 600",
        dir.path().display(),
        bin().display()
    );
    assert!(
        tmux.cmd(&[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "100",
            "-y",
            "30",
            &shell
        ])
        .status
        .success()
    );
    tmux.cmd(&["set-option", "-g", "window-size", "manual"]);

    // The default command with -it is an interactive shell on a terminal.
    tmux.send(&["tty; echo mark-$((6*7))", "Enter"]);
    tmux.expect("mark-42");
    assert!(tmux.screen().contains("/dev/pts/"), "{}", tmux.screen());

    tmux.send(&["stty size", "Enter"]);
    tmux.expect("30 100");

    // A resize of the host terminal reaches the guest's PTY.
    assert!(
        tmux.cmd(&["resize-window", "-t", "t", "-x", "120", "-y", "40"])
            .status
            .success()
    );
    tmux.send(&["clear; stty size", "Enter"]);
    tmux.expect("40 120");

    // Ctrl-C interrupts the guest's foreground command, not smolvm.
    tmux.send(&["sleep 300", "Enter"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    tmux.send(&["C-c"]);
    tmux.send(&["echo after-$((1+1))", "Enter"]);
    tmux.expect("after-2");

    // The shell's exit status becomes smolvm's, and the terminal is restored.
    tmux.send(&["exit 7", "Enter"]);
    tmux.expect("EXIT:7");
}
