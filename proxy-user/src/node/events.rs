//! Kubernetes Events like kube-proxy's (cluster mode): `Starting` on the Node once the first
//! sync is in, `FailedToStartServiceHealthcheck` on a Service whose health check port cannot be
//! bound. Published through events.k8s.io/v1 by kube-runtime's recorder (which folds repeats
//! into a series), from a bounded queue (full: dropped, as client-go drops) and at most once a
//! minute per event, so a failure that repeats on every sync does not flood the API server.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::model::ServiceName;

/// Events waiting to be published; more are dropped.
const QUEUE: usize = 100;
/// The same event (reason and object) is published at most once in this time.
const REPEAT_AFTER: Duration = Duration::from_secs(60);

/// A handle to the publishing task; cheap to clone.
#[derive(Clone, Debug)]
pub struct Events {
    node_name: String,
    queue: mpsc::Sender<(Event, ObjectReference)>,
}

impl Events {
    /// Starts the publishing task (inside a Tokio runtime). Events are reported by
    /// controller `sluice`, instance `sluice-<node>`.
    pub fn spawn(client: Client, node_name: &str) -> Self {
        let reporter = Reporter {
            controller: "sluice".into(),
            instance: Some(format!("sluice-{node_name}")),
        };
        let recorder = Recorder::new(client, reporter);
        let (queue, mut events) = mpsc::channel::<(Event, ObjectReference)>(QUEUE);
        tokio::spawn(async move {
            let mut last_sent: HashMap<(String, String), Instant> = HashMap::new();
            while let Some((event, regarding)) = events.recv().await {
                let key = (
                    event.reason.clone(),
                    format!("{:?}/{:?}", regarding.namespace, regarding.name),
                );
                if last_sent
                    .get(&key)
                    .is_some_and(|sent| sent.elapsed() < REPEAT_AFTER)
                {
                    debug!(reason = %event.reason, "event repeated within a minute: not sent");
                    continue;
                }
                last_sent.insert(key, Instant::now());
                if let Err(err) = recorder.publish(&event, &regarding).await {
                    warn!(reason = %event.reason, %err, "cannot publish an Event");
                }
            }
        });
        Self {
            node_name: node_name.to_owned(),
            queue,
        }
    }

    /// kube-proxy's `Starting`, on this node's Node.
    pub fn starting(&self) {
        self.send(
            Event {
                type_: EventType::Normal,
                reason: "Starting".into(),
                note: Some("sluice is serving this node's Services".into()),
                action: "StartKubeProxy".into(),
                secondary: None,
            },
            self.node_ref(),
        );
    }

    /// kube-proxy's `FailedToStartServiceHealthcheck`, on the Service.
    pub fn health_check_failed(&self, service: &ServiceName, port: u16, err: &str) {
        self.send(
            Event {
                type_: EventType::Warning,
                reason: "FailedToStartServiceHealthcheck".into(),
                note: Some(format!(
                    "node {} failed to start healthcheck \"{service}\" on port {port}: {err}",
                    self.node_name
                )),
                action: "Listen".into(),
                secondary: None,
            },
            ObjectReference {
                kind: Some("Service".into()),
                api_version: Some("v1".into()),
                namespace: Some(service.namespace.clone()),
                name: Some(service.name.clone()),
                // As kube-proxy: the name stands in for the UID it does not look up.
                uid: Some(service.to_string()),
                ..ObjectReference::default()
            },
        );
    }

    fn node_ref(&self) -> ObjectReference {
        ObjectReference {
            kind: Some("Node".into()),
            api_version: Some("v1".into()),
            name: Some(self.node_name.clone()),
            // As kube-proxy: the node name as the UID.
            uid: Some(self.node_name.clone()),
            ..ObjectReference::default()
        }
    }

    fn send(&self, event: Event, regarding: ObjectReference) {
        if self.queue.try_send((event, regarding)).is_err() {
            warn!("the Event queue is full: an Event is dropped");
        }
    }
}
