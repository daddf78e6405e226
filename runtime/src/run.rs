//! An ephemeral run: boot, set up the root, run one command attached to our stdio, power off.

use crate::attach::{Outcome, attach};
use crate::trace;
use crate::vm::{Vm, VmError, VmSpec};
use smolvm_protocol::{ErrorKind, ErrorReply, Exec, Setup};
use std::time::Duration;

pub struct RunRequest {
    pub vm: VmSpec,
    pub setup: Setup,
    /// Shell command lines run in order before `exec`, each of which must succeed.
    pub init: Vec<String>,
    pub exec: Exec,
    /// Forward our stdin to the command.
    pub stdin: bool,
}

/// Extra time the host grants beyond `--timeout` before it stops waiting for the agent.
const TIMEOUT_GRACE: Duration = Duration::from_secs(10);

pub async fn run_ephemeral(req: RunRequest) -> Result<Outcome, VmError> {
    let mut vm = Vm::boot(&req.vm).await?;
    let mut setup = req.setup;
    setup.network = vm.network_setup();
    vm.agent().setup(setup).await?;
    trace::mark("root filesystem ready");
    for (i, line) in req.init.iter().enumerate() {
        let init = Exec {
            argv: vec!["/bin/sh".into(), "-c".into(), line.clone()],
            env: req.exec.env.clone(),
            workdir: req.exec.workdir.clone(),
            user: req.exec.user.clone(),
            ..Default::default()
        };
        match attach(vm.agent().exec(init)?, false, false).await {
            Outcome::Exited(s) if s.shell_code() == 0 => {}
            Outcome::Exited(s) => {
                vm.shutdown().await;
                return Ok(Outcome::Failed(ErrorReply {
                    kind: ErrorKind::InvalidRequest,
                    message: format!(
                        "init command {} ({line:?}) failed with exit status {}",
                        i + 1,
                        s.shell_code()
                    ),
                }));
            }
            other => {
                vm.shutdown().await;
                return Ok(other);
            }
        }
    }
    let tty = req.exec.tty.is_some();
    let guard = req
        .exec
        .timeout_ms
        .map(|ms| Duration::from_millis(ms) + TIMEOUT_GRACE);
    let stream = vm.agent().exec(req.exec)?;
    let attached = attach(stream, req.stdin, tty);
    let outcome = match guard {
        Some(limit) => tokio::time::timeout(limit, attached)
            .await
            .unwrap_or_else(|_| {
                Outcome::Lost("the guest did not end the command after its timeout".into())
            }),
        None => attached.await,
    };
    let outcome = match outcome {
        Outcome::Lost(reason) => Outcome::Lost(format!("{reason}: {}", vm.failure_report().await)),
        o => o,
    };
    vm.shutdown().await;
    Ok(outcome)
}
