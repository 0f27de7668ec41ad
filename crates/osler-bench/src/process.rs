//! Starting and stopping `osler` child processes.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running `osler serve` and the FHIR base URL it printed.
pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Server {
    /// Starts `osler serve --data DIR --listen 127.0.0.1:0` and waits (up to `timeout`) for it
    /// to print its URL.
    pub fn start(osler: &Path, data: &Path, timeout: Duration) -> anyhow::Result<Server> {
        let mut child = Command::new(osler)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .env(
                "OSLER_LOG",
                std::env::var("OSLER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", osler.display()))?;
        let stdout = child.stdout.take().context("no stdout from the hub")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let deadline = Instant::now() + timeout;
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .context("the hub did not print its URL in time")?;
        let base = line.trim().to_owned();
        if !base.starts_with("http://") {
            let _ = child.kill();
            bail!("the hub printed {base:?} instead of its URL");
        }
        Ok(Server { child, base })
    }

    /// Asks the hub to stop (SIGTERM) and waits for it.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .context("cannot run kill")?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.kill()?;
        bail!("the hub did not stop within 30 s of SIGTERM")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A benchmark that fails half-way must not leave a hub running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
