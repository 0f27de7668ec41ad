//! The MQTT source: subscribes to a topic filter on a broker (QoS 1, persistent session) and
//! acknowledges each message only after its readings are in the outbox on disk, so a message
//! the gateway never stored is redelivered by the broker. Invalid readings go to the
//! quarantine with the reason; a message that is not readable at all goes there whole.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::outbox::Quarantined;
use crate::{Shared, now_ms};

/// Where to subscribe.
#[derive(Clone, Debug)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    /// A topic filter, e.g. `osler/+/readings`.
    pub topic: String,
}

/// Runs until the task is dropped; reconnects by itself.
pub async fn run(config: MqttConfig, shared: Arc<Shared>) {
    let mut opts = MqttOptions::new(
        format!("osler-{}", shared.gateway),
        &config.host,
        config.port,
    );
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_manual_acks(true);
    // A persistent session: the broker keeps QoS 1 messages for us while we are away.
    opts.set_clean_session(false);
    opts.set_max_packet_size(8 << 20, 8 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!(broker = %format!("{}:{}", config.host, config.port), topic = %config.topic, "MQTT connected");
                if let Err(e) = client.subscribe(&config.topic, QoS::AtLeastOnce).await {
                    tracing::error!(error = %e, "MQTT subscribe failed");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if handle(&shared, &p.topic, &p.payload).await
                    && let Err(e) = client.ack(&p).await
                {
                    tracing::warn!(error = %e, "MQTT ack failed; the broker will redeliver");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "MQTT connection lost; reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Stores a message's readings and quarantines what is invalid. True when all of it is
/// durable (and the message may be acknowledged).
async fn handle(shared: &Shared, topic: &str, payload: &[u8]) -> bool {
    let now = now_ms();
    let source = format!("mqtt {topic}");
    let quarantine = |payload: String, reason: String| Quarantined {
        id: 0,
        received_ms: now,
        source: source.clone(),
        payload,
        reason,
    };
    let items = match crate::input::parse_message(payload, now) {
        Ok(items) => items,
        Err(reason) => {
            let text = String::from_utf8_lossy(payload).into_owned();
            shared.status.quarantined.fetch_add(1, Ordering::Relaxed);
            return shared
                .outbox
                .quarantine(quarantine(text, reason))
                .await
                .is_ok();
        }
    };
    // Keep the original text of each item for the quarantine.
    let raw: Vec<String> = match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(serde_json::Value::Array(a)) => a.iter().map(|v| v.to_string()).collect(),
        Ok(v) => vec![v.to_string()],
        Err(_) => Vec::new(),
    };
    let mut readings = Vec::with_capacity(items.len());
    let mut bad = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        match item.and_then(|input| input.validate(now).map_err(|e| e.to_string())) {
            Ok(reading) => readings.push(reading),
            Err(reason) => bad.push(quarantine(raw.get(i).cloned().unwrap_or_default(), reason)),
        }
    }
    shared
        .status
        .received
        .fetch_add((readings.len() + bad.len()) as u64, Ordering::Relaxed);
    shared
        .status
        .quarantined
        .fetch_add(bad.len() as u64, Ordering::Relaxed);
    for q in bad {
        if let Err(e) = shared.outbox.quarantine(q).await {
            tracing::error!(error = %e, "cannot quarantine; the message stays unacknowledged");
            return false;
        }
    }
    match crate::ingest(
        shared,
        readings,
        now,
        crate::request_key(&[topic.as_bytes(), payload]),
    )
    .await
    {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "cannot store an MQTT message; leaving it unacknowledged");
            false
        }
    }
}
