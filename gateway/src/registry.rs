//! What the gateway knows: the models it routes (from the ModelDeployments and
//! their ready endpoints), the keys, and the requests in flight to each pod.
//! Discovery replaces the table and the keys as a whole; requests read them
//! without waiting on each other.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;

use crate::keys::KeySet;
use crate::route::Candidate;

/// One routable model — a ModelDeployment, or a LoRA adapter its pods serve
/// beside its model — and the deployment's ready pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// The id clients send as `model` and `/v1/models` lists.
    pub id: String,
    pub namespace: String,
    /// The ModelDeployment's name.
    pub deployment: String,
    /// The model name its pods serve it under, sent upstream as `model`: the
    /// deployment's name (`--served-model-name`), or the adapter's.
    pub served_name: String,
    /// For an adapter, the id of the deployment's model it runs on.
    pub parent: Option<String>,
    /// A canary running beside the stable pods: its ready pods and the share
    /// of requests they get.
    pub canary: Option<CanarySplit>,
    /// The ModelDeployment's creation time, seconds since the epoch.
    pub created: i64,
    /// The ready pods' serving addresses.
    pub endpoints: Vec<SocketAddr>,
}

/// A canary's ready pods (among [`Backend::endpoints`]) and its step's weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanarySplit {
    pub endpoints: Vec<SocketAddr>,
    /// Percent of the requests, 1 to 100.
    pub weight: u32,
}

/// Every routable model by id.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Table {
    pub backends: BTreeMap<String, Arc<Backend>>,
}

/// Shared state of the gateway.
#[derive(Debug)]
pub struct Registry {
    table: RwLock<Arc<Table>>,
    keys: RwLock<Arc<KeySet>>,
    in_flight: Mutex<HashMap<SocketAddr, Arc<AtomicUsize>>>,
    /// Requests split between a canary and the stable pods so far, per model.
    splits: Mutex<HashMap<String, u64>>,
    /// Bumped whenever the table changes, so that requests waiting for a
    /// ready pod look again.
    changed: watch::Sender<u64>,
    synced: AtomicBool,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            table: RwLock::default(),
            keys: RwLock::default(),
            in_flight: Mutex::default(),
            splits: Mutex::default(),
            changed: watch::channel(0).0,
            synced: AtomicBool::new(false),
        }
    }
}

impl Registry {
    pub fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the table (when it differs), and forgets the in-flight counts
    /// of pods that are gone once nothing holds them.
    pub fn set_table(&self, table: Table) {
        {
            let mut current = self.table.write().unwrap_or_else(|e| e.into_inner());
            if **current == table {
                return;
            }
            *current = Arc::new(table);
        }
        let live: std::collections::HashSet<SocketAddr> = self
            .table()
            .backends
            .values()
            .flat_map(|b| b.endpoints.iter().copied())
            .collect();
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|addr, count| live.contains(addr) || Arc::strong_count(count) > 1);
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn set_keys(&self, keys: KeySet) {
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
    }

    /// A receiver that sees every later table change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::SeqCst);
    }

    /// Whether the first lists of models, endpoints and keys are in.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }

    fn counter(&self, addr: SocketAddr) -> Arc<AtomicUsize> {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(addr)
            .or_default()
            .clone()
    }

    /// The endpoints of `backend` but `exclude`, with their requests in flight.
    pub fn candidates(&self, backend: &Backend, exclude: &[SocketAddr]) -> Vec<Candidate> {
        backend
            .endpoints
            .iter()
            .filter(|addr| !exclude.contains(addr))
            .map(|&addr| Candidate {
                addr,
                in_flight: self.counter(addr).load(Ordering::SeqCst),
            })
            .collect()
    }

    /// The number of this request among those of model `id` that were split
    /// between a canary and the stable pods (0 for the first).
    pub fn next_split(&self, id: &str) -> u64 {
        let mut splits = self.splits.lock().unwrap_or_else(|e| e.into_inner());
        let n = splits.entry(id.to_string()).or_default();
        *n += 1;
        *n - 1
    }

    /// Counts a request in flight to `addr` until the guard is dropped.
    pub fn start(&self, addr: SocketAddr) -> InFlight {
        let counter = self.counter(addr);
        counter.fetch_add(1, Ordering::SeqCst);
        InFlight { counter }
    }
}

/// One request in flight to a pod.
#[derive(Debug)]
pub struct InFlight {
    counter: Arc<AtomicUsize>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(endpoints: &[&str]) -> Table {
        let backend = Backend {
            id: "chat".into(),
            namespace: "ns".into(),
            deployment: "chat".into(),
            served_name: "chat".into(),
            parent: None,
            canary: None,
            created: 0,
            endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
        };
        Table {
            backends: BTreeMap::from([("chat".to_string(), Arc::new(backend))]),
        }
    }

    #[test]
    fn in_flight_counts_follow_the_guards_and_waiters_hear_changes() {
        let registry = Registry::default();
        let mut changes = registry.subscribe();
        registry.set_table(table(&["127.0.0.1:1", "127.0.0.2:1"]));
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        // The same table is no change.
        registry.set_table(table(&["127.0.0.1:1", "127.0.0.2:1"]));
        assert!(!changes.has_changed().unwrap());
        let backend = registry.table().backends["chat"].clone();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let guard = registry.start(a);
        let _other = registry.start(a);
        let counts = registry.candidates(&backend, &[]);
        assert_eq!(counts[0].in_flight, 2);
        assert_eq!(counts[1].in_flight, 0);
        drop(guard);
        assert_eq!(registry.candidates(&backend, &[])[0].in_flight, 1);
        assert_eq!(registry.candidates(&backend, &[a]).len(), 1);
    }
}
