//! Child processes: each with a log file, killed on drop (even when the
//! harness panics) and when the harness itself dies (`PR_SET_PDEATHSIG`),
//! and watched for deaths nobody caused.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that spawned the child ends, so
//! every child is spawned by one thread that lives as long as the harness.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
/// Every child alive, for the watchdog and the signal handler.
static ALIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn spawn(mut cmd: Command) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent;
    // it runs in the child between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::spawn(move || {
            for (mut cmd, reply) in rx {
                let _ = reply.send(cmd.spawn());
            }
        });
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    lock(sender)
        .send((cmd, tx))
        .map_err(|_| io::Error::other("spawner gone"))?;
    let child = rx.recv().map_err(|_| io::Error::other("spawner gone"))??;
    lock(&ALIVE).push(child.id());
    Ok(child)
}

/// Sends a signal to a process id.
pub fn signal_pid(pid: u32, sig: i32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) with a pid this harness spawned and still tracks.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// SIGKILLs every child still alive (the watchdog's and signals' last resort).
pub fn kill_all() {
    for pid in lock(&ALIVE).drain(..) {
        signal_pid(pid, libc::SIGKILL);
    }
}

/// Exits the harness, children first, on SIGINT or SIGTERM, and after
/// `limit` whatever happens (a hang anywhere cannot outlive the run).
pub fn install_last_resorts(limit: Duration) {
    static CAUGHT: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
    extern "C" fn on_signal(sig: libc::c_int) {
        CAUGHT.store(sig, std::sync::atomic::Ordering::Relaxed);
    }
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores into an atomic.
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }
    let started = Instant::now();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(100));
        let sig = CAUGHT.load(std::sync::atomic::Ordering::Relaxed);
        if sig != 0 {
            eprintln!("pay-chaos: signal {sig}: stopping every child");
            kill_all();
            std::process::exit(128 + sig);
        }
        if started.elapsed() > limit {
            eprintln!(
                "pay-chaos: the run exceeded its hard limit of {}s: stopping every child",
                limit.as_secs()
            );
            kill_all();
            std::process::exit(3);
        }
    });
}

/// How to start one process.
#[derive(Clone, Debug)]
pub struct Spec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub dir: PathBuf,
}

/// One child process: started, stopped and restarted by the harness. Any
/// exit the harness did not cause is recorded.
pub struct Proc {
    pub name: String,
    pub spec: Spec,
    child: Option<Child>,
    log: PathBuf,
    /// The harness is stopping it: an exit is expected.
    stopping: bool,
    paused: bool,
    pub starts: u32,
    /// Exits the harness did not cause.
    pub deaths: Vec<String>,
}

impl Proc {
    pub fn start(name: &str, spec: Spec, log: &Path) -> io::Result<Proc> {
        let mut p = Proc {
            name: name.into(),
            spec,
            child: None,
            log: log.to_path_buf(),
            stopping: false,
            paused: false,
            starts: 0,
            deaths: Vec::new(),
        };
        p.launch()?;
        Ok(p)
    }

    fn launch(&mut self) -> io::Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(&self.spec.program);
        cmd.args(&self.spec.args)
            .current_dir(&self.spec.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in &self.spec.env {
            cmd.env(k, v);
        }
        self.child = Some(spawn(cmd).map_err(|e| {
            io::Error::other(format!("cannot start {}: {e}", self.spec.program.display()))
        })?);
        self.stopping = false;
        self.paused = false;
        self.starts += 1;
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn paused(&self) -> bool {
        self.paused
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Notes an exit nobody caused. Call it often.
    pub fn poll(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if let Ok(Some(status)) = child.try_wait() {
            let pid = child.id();
            lock(&ALIVE).retain(|p| *p != pid);
            self.child = None;
            if !self.stopping {
                self.deaths.push(format!(
                    "{} (pid {pid}) exited by itself: {status}; log {}:\n{}",
                    self.name,
                    self.log.display(),
                    tail(&self.log, 15)
                ));
            }
        }
    }

    /// SIGSTOP / SIGCONT.
    pub fn pause(&mut self, on: bool) -> bool {
        let Some(pid) = self.pid() else { return false };
        self.paused = on;
        signal_pid(pid, if on { libc::SIGSTOP } else { libc::SIGCONT })
    }

    /// Sends `sig` meaning to stop the process, and waits up to `wait` for it
    /// to exit (then SIGKILLs it). The exit is expected.
    pub fn stop(&mut self, sig: i32, wait: Duration) {
        self.poll();
        let Some(pid) = self.pid() else { return };
        self.stopping = true;
        if self.paused && sig != libc::SIGKILL {
            signal_pid(pid, libc::SIGCONT);
        }
        signal_pid(pid, sig);
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            lock(&ALIVE).retain(|p| *p != pid);
        }
    }

    /// Starts it again (after a stop), with its spec as it is now.
    pub fn restart(&mut self) -> io::Result<()> {
        self.poll();
        if self.child.is_some() {
            return Ok(());
        }
        self.launch()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            lock(&ALIVE).retain(|p| *p != child.id());
        }
    }
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
