//! Starting a process without copying the agent: `clone(CLONE_VM | CLONE_VFORK)` with a plan
//! prepared in advance, as `posix_spawn` does, plus what `posix_spawn` cannot do (chroot,
//! a controlling terminal, changing user).
//!
//! Why: `fork()` copies the agent's page tables and then both sides take copy-on-write
//! faults. Under TCG that is tens of milliseconds per command. With `CLONE_VM` the child runs
//! in the agent's memory on its own stack while the agent waits (`CLONE_VFORK`) until the
//! child has exec'd or died.
//!
//! Rules for the child, which shares the agent's memory: no allocation, no locks, no Rust
//! panics: only async-signal-safe syscalls on the [`Plan`]. Signals are blocked across the
//! clone so no agent signal handler can run in the child; the child resets every handler
//! to the default before unblocking.

use std::ffi::{CString, c_void};
use std::io;
use std::os::fd::RawFd;
use std::ptr;

const CHILD_STACK: usize = 128 * 1024;

/// Everything the child does, prepared by the parent.
pub struct Plan {
    root: CString,
    /// `/a`, `/a/b`, ... for `mkdir -p` of the working directory.
    workdir_prefixes: Vec<CString>,
    workdir: CString,
    /// Paths to try for the program: itself if it contains `/`, else each `PATH` entry.
    candidates: Vec<CString>,
    /// Own the strings `argv_ptrs` and `envp_ptrs` point into.
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
    /// Descriptors that become the child's 0, 1 and 2. All above 2.
    stdio: [RawFd; 3],
    controlling_tty: bool,
    groups: Vec<libc::gid_t>,
    uid: libc::uid_t,
    gid: libc::gid_t,
    error_fd: RawFd,
}

/// What to run, as the caller knows it.
pub struct Spec<'a> {
    pub root: &'a str,
    pub workdir: &'a str,
    pub argv: &'a [String],
    pub env: &'a [String],
    pub stdio: [RawFd; 3],
    pub controlling_tty: bool,
    pub uid: u32,
    pub gid: u32,
    pub groups: &'a [u32],
}

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{s:?} contains a NUL byte"),
        )
    })
}

impl Plan {
    pub fn new(spec: &Spec) -> io::Result<Plan> {
        let program = spec
            .argv
            .first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
        let mut prefixes = Vec::new();
        let mut acc = String::new();
        for part in spec.workdir.split('/').filter(|p| !p.is_empty()) {
            acc.push('/');
            acc.push_str(part);
            prefixes.push(cstring(&acc)?);
        }
        // Looked up in the command's own PATH, inside the root, like execvp after chroot.
        let candidates = if program.contains('/') {
            vec![cstring(program)?]
        } else {
            let path = spec
                .env
                .iter()
                .find_map(|kv| kv.strip_prefix("PATH="))
                .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
            path.split(':')
                .map(|d| if d.is_empty() { "." } else { d })
                .map(|d| cstring(&format!("{}/{program}", d.trim_end_matches('/'))))
                .collect::<io::Result<_>>()?
        };
        let argv: Vec<CString> = spec
            .argv
            .iter()
            .map(|a| cstring(a))
            .collect::<io::Result<_>>()?;
        let envp: Vec<CString> = spec
            .env
            .iter()
            .map(|e| cstring(e))
            .collect::<io::Result<_>>()?;
        let null_terminated =
            |v: &[CString]| v.iter().map(|c| c.as_ptr()).chain([ptr::null()]).collect();
        if spec.stdio.iter().any(|&fd| fd <= 2) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "stdio descriptors must be above 2",
            ));
        }
        Ok(Plan {
            root: cstring(spec.root)?,
            workdir_prefixes: prefixes,
            workdir: cstring(spec.workdir)?,
            candidates,
            argv_ptrs: null_terminated(&argv),
            envp_ptrs: null_terminated(&envp),
            _argv: argv,
            _envp: envp,
            stdio: spec.stdio,
            controlling_tty: spec.controlling_tty,
            groups: spec.groups.to_vec(),
            uid: spec.uid,
            gid: spec.gid,
            error_fd: -1,
        })
    }
}

/// Starts the plan; returns the child's pid once it has exec'd, or the errno that stopped
/// it (it has then exited; the reaper collects it).
pub fn spawn(mut plan: Plan) -> io::Result<i32> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let (err_r, err_w) = (fds[0], fds[1]);
    plan.error_fd = err_w;
    let mut stack = vec![0u8; CHILD_STACK];
    // SAFETY: the stack outlives the child's use of it (CLONE_VFORK suspends us until it
    // execs or exits); the plan is only read by the child; signals are blocked across clone.
    let pid = unsafe {
        let top = (stack.as_mut_ptr().add(CHILD_STACK) as usize & !15) as *mut c_void;
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::clone(
            child,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &plan as *const Plan as *mut c_void,
        );
        let clone_err = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, ptr::null_mut());
        libc::close(err_w);
        if pid < 0 {
            libc::close(err_r);
            return Err(clone_err);
        }
        pid
    };
    let mut errno = [0u8; 4];
    // SAFETY: reading into a 4-byte buffer; the write end is closed in both processes by now.
    let n = unsafe { libc::read(err_r, errno.as_mut_ptr().cast(), 4) };
    // SAFETY: closing our descriptor.
    unsafe { libc::close(err_r) };
    drop(stack);
    if n == 4 {
        Err(io::Error::from_raw_os_error(i32::from_ne_bytes(errno)))
    } else {
        Ok(pid)
    }
}

extern "C" fn child(arg: *mut c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's Plan, alive and unchanged while we run (CLONE_VFORK).
    let p = unsafe { &*(arg as *const Plan) };
    // SAFETY: only async-signal-safe syscalls on pointers into the plan.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::sigaction(sig, &dfl, ptr::null_mut());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, ptr::null_mut());

        check(p, libc::chroot(p.root.as_ptr()));
        check(p, libc::chdir(c"/".as_ptr()));
        for dir in &p.workdir_prefixes {
            libc::mkdir(dir.as_ptr(), 0o755);
        }
        check(p, libc::chdir(p.workdir.as_ptr()));
        for (target, &fd) in p.stdio.iter().enumerate() {
            check(p, libc::dup2(fd, target as i32));
        }
        check(p, libc::setsid());
        if p.controlling_tty {
            check(p, libc::ioctl(0, libc::TIOCSCTTY, 0));
        }
        check(p, libc::setgroups(p.groups.len(), p.groups.as_ptr()));
        check(p, libc::setgid(p.gid));
        check(p, libc::setuid(p.uid));
        let mut denied = false;
        for c in &p.candidates {
            libc::execve(c.as_ptr(), p.argv_ptrs.as_ptr(), p.envp_ptrs.as_ptr());
            match *libc::__errno_location() {
                libc::EACCES => denied = true,
                libc::ENOENT | libc::ENOTDIR | libc::ELOOP => {}
                _ => fail(p),
            }
        }
        if denied {
            *libc::__errno_location() = libc::EACCES;
        }
        fail(p)
    }
}

/// Reports the current errno to the parent and exits.
unsafe fn fail(p: &Plan) -> ! {
    // SAFETY: errno of this thread, a write of 4 bytes, and _exit.
    unsafe {
        let errno = (*libc::__errno_location()).to_ne_bytes();
        libc::write(p.error_fd, errno.as_ptr().cast(), 4);
        libc::_exit(127)
    }
}

unsafe fn check(p: &Plan, r: libc::c_int) {
    if r < 0 {
        // SAFETY: see `fail`.
        unsafe { fail(p) }
    }
}
