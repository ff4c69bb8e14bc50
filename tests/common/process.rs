//! The gateway as its own process (the real binary), so that a test can kill it outright.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::Channel;

use super::free_port;

/// The gateway as its own process, so that it can be killed outright.
pub(crate) struct Process {
    child: std::process::Child,
    /// A channel to it.
    pub channel: Channel,
    _config: tempfile::NamedTempFile,
}

impl Process {
    /// Starts `ecr-gateway serve` with the configuration `text` on a free port and connects.
    pub(crate) async fn start(text: &str) -> Process {
        Process::start_with(text, &[], Stdio::null()).await
    }

    /// [`Process::start`] with more environment variables, and its standard error to `stderr`.
    pub(crate) async fn start_with(text: &str, env: &[(&str, &str)], stderr: Stdio) -> Process {
        use std::io::Write;
        let mut file = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("temp file");
        file.write_all(text.as_bytes()).expect("write config");
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_ecr-gateway"))
            .args(["serve", "--config"])
            .arg(file.path())
            .env("ECR_GATEWAY__SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn the gateway");
        let deadline = Instant::now() + Duration::from_secs(30);
        let channel = loop {
            match Channel::from_shared(format!("http://127.0.0.1:{port}"))
                .expect("uri")
                .connect()
                .await
            {
                Ok(channel) => break channel,
                Err(error) => {
                    assert!(Instant::now() < deadline, "the gateway did not come up: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        Process {
            child,
            channel,
            _config: file,
        }
    }

    /// The configuration file it was started with (a test may rewrite it, then SIGHUP).
    #[allow(dead_code)]
    pub(crate) fn config_path(&self) -> &std::path::Path {
        self._config.path()
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the gateway.
    pub(crate) fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on the pid of our own, still-owned child.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal})");
    }

    /// SIGTERM, then waits up to `within` for the gateway to exit; its exit status.
    pub(crate) fn terminate(mut self, within: Duration) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not exit within {within:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no drain, no hand-back of the run.
    pub(crate) fn kill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
