//! The MQTT source: subscribes to a topic filter on a broker (MQTT 5, QoS 1, a session the
//! broker keeps while the gateway is away) and acknowledges each message only after the commit
//! that holds it, so a message the gateway never stored is redelivered by the broker.
//!
//! Two tasks, so that nothing the gateway does can stall the connection:
//! - the **connection** task only polls the client (which sends pings, reconnects, reads) and
//!   hands each message to the storer; it never waits on the disk or on an acknowledgement;
//! - the **storer** takes every message waiting (up to [`BATCH`]), turns each into one intake
//!   [`Unit`] (readings, what to quarantine, the message's key), stores them in one group
//!   commit, and acknowledges them in the order they arrived, without ever blocking on the
//!   client (acknowledgements it cannot hand over yet wait in a queue).
//!
//! Flow control: the gateway tells the broker how many unacknowledged messages it takes at once
//! ([`RECEIVE_MAXIMUM`], MQTT 5's Receive Maximum). A message the outbox refuses (full) is kept,
//! unacknowledged, and retried in order before anything newer, every second until it fits; the
//! broker holds the rest. Invalid readings go to the quarantine with the reason, byte-exact; a
//! message that is not readable at all goes there whole.
//!
//! Broker settings that matter (Mosquitto): the broker keeps at most `max_queued_messages`
//! (default 1000) messages for the gateway while it is disconnected, and drops the rest; set it
//! to what a gateway outage must hold (or 0, no limit).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{ConnectProperties, Packet, Publish};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;

use crate::intake::Unit;
use crate::outbox::Quarantined;
use crate::{Shared, now_ms};

/// Where to subscribe.
#[derive(Clone, Debug)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    /// A topic filter, e.g. `osler/+/readings`.
    pub topic: String,
    /// The broker's CA certificate (PEM): connect over TLS trusting it alone. `None`: plain
    /// MQTT (a broker on this machine or a trusted segment).
    pub tls_ca: Option<Vec<u8>>,
}

/// Unacknowledged messages the broker may send at once: enough for a group commit to hold
/// thousands of messages, bounded so the gateway's memory is.
pub const RECEIVE_MAXIMUM: u16 = 4096;

/// The most messages one group commit takes.
pub const BATCH: usize = 4096;

/// How long the broker keeps the gateway's session (and its messages) while it is away:
/// a week, longer than any outage worth riding out.
const SESSION_EXPIRY_S: u32 = 7 * 24 * 3600;

/// Runs until the task is dropped; reconnects by itself.
pub async fn run(config: MqttConfig, shared: Arc<Shared>) {
    let mut opts = MqttOptions::new(
        format!("osler-{}", shared.gateway),
        &config.host,
        config.port,
    );
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_manual_acks(true);
    // A session the broker keeps: QoS 1 messages wait for us while we are away.
    opts.set_clean_start(false);
    let mut props = ConnectProperties::new();
    props.session_expiry_interval = Some(SESSION_EXPIRY_S);
    props.receive_maximum = Some(RECEIVE_MAXIMUM);
    props.max_packet_size = Some(8 << 20);
    opts.set_connect_properties(props);
    if let Some(ca) = &config.tls_ca {
        opts.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Simple {
            ca: ca.clone(),
            alpn: None,
            client_auth: None,
        }));
    }
    // Room for every acknowledgement of a full window and then some: the storer hands them
    // over without waiting, and the connection task drains them between reads.
    let (client, mut eventloop) = AsyncClient::new(opts, 4 * RECEIVE_MAXIMUM as usize);
    let (tx, rx) = mpsc::channel::<Publish>(BATCH);
    let storer = tokio::spawn(store(
        rx,
        client.clone(),
        shared.clone(),
        config.topic.clone(),
    ));
    let broker = format!("{}:{}", config.host, config.port);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!(%broker, topic = %config.topic, "MQTT connected");
                shared.status.mqtt_connected(now_ms());
                if let Err(e) = client.try_subscribe(&config.topic, QoS::AtLeastOnce) {
                    tracing::error!(error = %e, "MQTT subscribe failed");
                    shared
                        .status
                        .mqtt_down(format!("subscribe failed: {e}"), now_ms());
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                shared.status.mqtt_message(now_ms());
                if tx.send(p).await.is_err() {
                    // The storer is gone only when the gateway stops.
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(%broker, error = %e, "MQTT connection lost; reconnecting");
                shared.status.mqtt_down(e.to_string(), now_ms());
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    storer.abort();
}

/// The storer: group commits, acknowledgements in arrival order, refused messages retried.
async fn store(
    mut rx: mpsc::Receiver<Publish>,
    client: AsyncClient,
    shared: Arc<Shared>,
    filter: String,
) {
    // Messages the outbox refused, oldest first: retried before anything newer.
    let mut retry: VecDeque<Publish> = VecDeque::new();
    // Acknowledgements not yet handed to the client, in order.
    let mut acks: VecDeque<Publish> = VecDeque::new();
    loop {
        flush_acks(&client, &mut acks);
        let mut batch: Vec<Publish> = retry.drain(..).collect();
        let mut fresh = 0;
        // Newer messages join only when nothing waits for a retry (order), and only up to a
        // batch; with acknowledgements pending, wait a moment at most so they go out.
        if batch.is_empty() {
            let wait = if acks.is_empty() {
                Duration::from_secs(3600)
            } else {
                Duration::from_millis(5)
            };
            match tokio::time::timeout(wait, rx.recv()).await {
                Ok(Some(p)) => batch.push(p),
                Ok(None) => return,
                Err(_) => continue,
            }
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            fresh = batch.len();
        }
        let now = now_ms();
        let units: Vec<Unit> = batch
            .iter()
            .map(|p| unit(p, now, &shared, &filter))
            .collect();
        // Counted once, when first received (a retry is the same message).
        let (readings, bad) = units[batch.len() - fresh..]
            .iter()
            .fold((0, 0), |(r, q), u| {
                (r + u.readings.len(), q + u.quarantine.len())
            });
        shared.status.count_in((readings + bad) as u64, bad as u64);
        let outcomes = match shared.intake.ingest(units, now).await {
            Ok(o) => o,
            Err(e) => {
                let err = e.to_string();
                (0..batch.len())
                    .map(|_| Err(crate::outbox::OutboxError::Commit(err.clone())))
                    .collect()
            }
        };
        let mut refused = None;
        for (p, outcome) in batch.into_iter().zip(outcomes) {
            match outcome {
                // Once one message is refused, every later one waits behind it (order).
                Ok(()) if refused.is_none() => acks.push_back(p),
                Ok(()) => retry.push_back(p),
                Err(e) => {
                    refused.get_or_insert(e);
                    retry.push_back(p);
                }
            }
        }
        shared.status.mqtt_waiting(retry.len() as u64, now_ms());
        if let Some(e) = refused {
            tracing::warn!(error = %e, waiting = retry.len(), "MQTT messages not stored; they stay unacknowledged and are retried in order");
            flush_acks(&client, &mut acks);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Hands acknowledgements to the client in order, as far as its queue takes them now.
fn flush_acks(client: &AsyncClient, acks: &mut VecDeque<Publish>) {
    while let Some(p) = acks.front() {
        if p.qos != QoS::AtMostOnce && client.try_ack(p).is_err() {
            // The client's queue is full: the connection task drains it between reads.
            return;
        }
        acks.pop_front();
    }
}

/// One message as an intake unit: its valid readings, its invalid ones (or the whole message
/// when it is unreadable) to quarantine with the reason, and its key (topic and payload, so
/// the broker's redelivery of a message already stored is recognised).
fn unit(p: &Publish, now: i64, shared: &Shared, filter: &str) -> Unit {
    let assignments = &shared.assignments;
    let topic = String::from_utf8_lossy(&p.topic);
    // The topic carries the device (the broker's ACL lets it publish under its own name
    // only); unless devices are open, a message on a topic that names none is refused.
    let device = if shared.devices.open {
        None
    } else {
        match crate::devices::topic_device(filter, &topic) {
            Some(d) => Some(d),
            None => {
                return Unit {
                    request: Some(crate::request_key(&[&p.topic, &p.payload])),
                    quarantine: vec![Quarantined {
                        id: 0,
                        received_ms: now,
                        source: format!("mqtt {topic}"),
                        payload: p.payload.to_vec(),
                        reason: format!(
                            "the topic names no device (expected {filter} with the device's id for +)"
                        ),
                    }],
                    ..Unit::default()
                };
            }
        }
    };
    let source = format!("mqtt {topic}");
    let quarantine = |payload: Vec<u8>, reason: String| Quarantined {
        id: 0,
        received_ms: now,
        source: source.clone(),
        payload,
        reason,
    };
    let request = Some(crate::request_key(&[&p.topic, &p.payload]));
    let mut unit = Unit {
        request,
        ..Unit::default()
    };
    match crate::input::parse_message(&p.payload, now) {
        Err(reason) => unit.quarantine.push(quarantine(p.payload.to_vec(), reason)),
        Ok(items) => {
            let single = items.len() == 1;
            for (i, item) in items.into_iter().enumerate() {
                let admitted = item.and_then(|item| {
                    crate::items::admit(item, device.as_deref(), now, assignments)
                        .map_err(|r| r.reason)
                });
                match admitted {
                    Ok(crate::items::Admitted::Reading(r)) => unit.readings.push(r),
                    Ok(crate::items::Admitted::ByDevice(r)) => unit.by_device.push(r),
                    Ok(crate::items::Admitted::Alert(a)) => unit.alerts.push(a),
                    // A message of one reading is kept exactly as received; one reading of
                    // an array is kept as that element's JSON, with its index.
                    Err(reason) if single => {
                        unit.quarantine.push(quarantine(p.payload.to_vec(), reason))
                    }
                    Err(reason) => unit.quarantine.push(quarantine(
                        crate::input::element(&p.payload, i).unwrap_or_default(),
                        format!("reading {i} of the message: {reason}"),
                    )),
                }
            }
        }
    }
    unit
}
