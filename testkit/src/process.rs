//! A child process the tests start beside the servers (a Sentinel, a TLS
//! server, pay-sidecar): its own temporary directory, its log in a file
//! there, killed (SIGKILL) on drop even when a test panics.

use std::process::{Child, Command, ExitStatus, Stdio};

pub struct Proc {
    child: Option<Child>,
    /// The port it listens on (0: none).
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// Its log file's name, in `dir`.
    log: &'static str,
    /// The binary it runs.
    pub bin: String,
}

impl Proc {
    /// Spawns `cmd` in `dir`, stdin closed. Its stdout and stderr go to the
    /// log file `log` in `dir`, or nowhere when it writes `log` itself.
    pub fn spawn(
        mut cmd: Command,
        dir: tempfile::TempDir,
        log: &'static str,
        output_to_log: bool,
        port: u16,
    ) -> Proc {
        let bin = cmd.get_program().to_string_lossy().into_owned();
        let (stdout, stderr) = if output_to_log {
            let file = std::fs::File::create(dir.path().join(log)).expect("create the log");
            (Stdio::from(file.try_clone().unwrap()), Stdio::from(file))
        } else {
            (Stdio::null(), Stdio::null())
        };
        let child = cmd
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        Proc {
            child: Some(child),
            port,
            dir,
            log,
            bin,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(self.log)).unwrap_or_default()
    }

    /// SIGKILL: no goodbye, no save.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process has exited (e.g. refused to start).
    pub fn exited(&mut self) -> bool {
        self.exit_status().is_some()
    }

    /// How it ended, once it has (not once killed).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok()?
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`...) with `kill`.
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("a running process").id();
        let status = Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {pid}");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
