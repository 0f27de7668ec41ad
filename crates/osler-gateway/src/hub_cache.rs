//! What the gateway keeps of the hub's configuration (per-patient thresholds, device
//! assignments): polled, applied, and kept on disk so that a gateway restarted while the hub
//! is away still knows it.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How soon a failed fetch is tried again (a successful one waits the whole period).
const RETRY: Duration = Duration::from_secs(2);

/// Polls `GET {hub}{path}` every `every` until `stop`, each request signed with the
/// gateway's key (the hub answers every patient's data only to an enrolled gateway); each
/// answer that differs from the last is given to `apply` (which returns how many items it
/// holds, or why it is unreadable) and, once applied, written to `file` in `data`. Blocking:
/// give it its own thread.
#[allow(clippy::too_many_arguments)]
pub fn poll(
    upload: &crate::UploadConfig,
    key: &osler_wire::GatewayKey,
    path: &str,
    data: &Path,
    file: &str,
    every: Duration,
    stop: &AtomicBool,
    apply: impl Fn(&str) -> Result<usize, String>,
) {
    let agent = upload.agent(Duration::from_secs(10));
    let hub = &upload.hub;
    let mut last_text = String::new();
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        next = Instant::now() + every;
        let signature = key.sign_request(&upload.gateway, "GET", path, crate::now_ms());
        let fetched = agent
            .get(&format!("{hub}{path}"))
            .set(osler_wire::REQUEST_HEADER, &signature)
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
                // Soon again: the hub may be back, or have just enrolled this gateway.
                next = next.min(Instant::now() + RETRY);
                tracing::debug!(error = %e, path, "cannot fetch from the hub; keeping the cached answer")
            }
        }
    }
}
