//! What the gateway keeps of the hub's configuration (per-patient thresholds, device
//! assignments): polled, applied, and kept on disk so that a gateway restarted while the hub
//! is away still knows it.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Polls `GET {hub}{path}` every `every` until `stop`; each answer that differs from the last
/// is given to `apply` (which returns how many items it holds, or why it is unreadable) and,
/// once applied, written to `file` in `data`. Blocking: give it its own thread.
pub fn poll(
    hub: &str,
    path: &str,
    data: &Path,
    file: &str,
    every: Duration,
    stop: &AtomicBool,
    apply: impl Fn(&str) -> Result<usize, String>,
) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    let mut last_text = String::new();
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        next = Instant::now() + every;
        let fetched = agent
            .get(&format!("{hub}{path}"))
            .call()
            .map_err(|e| e.to_string())
            .and_then(|r| r.into_string().map_err(|e| e.to_string()));
        match fetched {
            Ok(text) if text != last_text => match apply(&text) {
                Ok(n) => {
                    // Written aside then renamed: a crash leaves the old file or the new, whole.
                    let tmp = data.join(format!("{file}.tmp"));
                    let saved = std::fs::write(&tmp, &text)
                        .and_then(|()| std::fs::rename(&tmp, data.join(file)));
                    if let Err(e) = saved {
                        tracing::warn!(error = %e, file, "cannot keep the hub's answer on disk; it stays in memory");
                    }
                    tracing::info!(items = n, path, "updated from the hub");
                    last_text = text;
                }
                Err(e) => {
                    tracing::warn!(error = %e, path, "the hub's answer is unreadable; keeping the cached one")
                }
            },
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, path, "cannot reach the hub; keeping the cached answer")
            }
        }
    }
}
