//! The toll-fraud policy in the daemon: the gate the call core asks before every outbound
//! call, the policy's alerts, and the "locked to internal calls" state kept in the store.

use std::sync::{Arc, Mutex, PoisonError};

use firewall::policy::{CallPolicy, Decision, PolicyAlert, PolicyConfig};
use pbx_core::endpoint::{CallGate, GateDecision};
use pbx_core::Millis;

use crate::store::{Store, StoreError};

/// Store key of the extensions locked to internal calls (a JSON list).
const LOCKS_KEY: &str = "tollfraud_locks";

/// The policy shared by the call core's gate and the firewall's admin and alerting.
#[derive(Debug, Clone)]
pub struct TollFraud {
    policy: Arc<Mutex<CallPolicy>>,
}

impl TollFraud {
    /// The policy with the locks stored before a restart re-applied.
    pub fn new(cfg: PolicyConfig, store: &Store) -> TollFraud {
        let mut policy = CallPolicy::new(cfg);
        match stored_locks(store) {
            Ok(exts) => {
                for ext in &exts {
                    policy.lock_to_internal(ext);
                }
                if !exts.is_empty() {
                    tracing::warn!(extensions = ?exts, "toll-fraud: extensions locked to internal calls (outpostctl fw unlock EXT)");
                }
            }
            Err(err) => tracing::error!(%err, "toll-fraud: cannot read the stored locks"),
        }
        TollFraud {
            policy: Arc::new(Mutex::new(policy)),
        }
    }

    /// Replaces the policy's settings (a configuration change); locks stay, counters of
    /// calls in progress restart from zero.
    pub fn set_config(&self, cfg: PolicyConfig) {
        let mut p = self.lock();
        if p.config() == &cfg {
            return;
        }
        let locked = p.locked();
        *p = CallPolicy::new(cfg);
        for ext in &locked {
            p.lock_to_internal(ext);
        }
    }

    /// The check the call core asks before each outbound call.
    pub fn gate(&self) -> Box<dyn CallGate> {
        Box::new(PolicyGate {
            policy: self.policy.clone(),
        })
    }

    /// Alerts raised since the last call.
    pub fn take_alerts(&self) -> Vec<PolicyAlert> {
        let mut p = self.lock();
        std::iter::from_fn(|| p.poll_alert()).collect()
    }

    /// Extensions locked to internal calls.
    pub fn locked(&self) -> Vec<String> {
        self.lock().locked()
    }

    /// Lifts the lock of `ext`; true if it was locked. The store is updated.
    pub fn unlock(&self, ext: &str, store: &Store) -> Result<bool, StoreError> {
        let was = self.lock().unlock(ext);
        if was {
            self.save(store)?;
        }
        Ok(was)
    }

    /// Writes the current locks to the store.
    pub fn save(&self, store: &Store) -> Result<(), StoreError> {
        let locked = self.locked();
        let json = serde_json::to_vec(&locked).unwrap_or_default();
        store.meta_put(LOCKS_KEY, &json)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CallPolicy> {
        self.policy.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn stored_locks(store: &Store) -> Result<Vec<String>, StoreError> {
    Ok(store
        .meta_get(LOCKS_KEY)?
        .and_then(|v| serde_json::from_slice(&v).ok())
        .unwrap_or_default())
}

/// The call core's view of the policy.
#[derive(Debug)]
struct PolicyGate {
    policy: Arc<Mutex<CallPolicy>>,
}

impl CallGate for PolicyGate {
    fn check(
        &mut self,
        now: Millis,
        ext: &str,
        dialled: &str,
        trunk: Option<&str>,
    ) -> GateDecision {
        let mut p = self.policy.lock().unwrap_or_else(PoisonError::into_inner);
        match p.check(now, ext, dialled, trunk) {
            Decision::Allow => GateDecision::Allow,
            Decision::Refuse {
                reason,
                lock_extension,
                ..
            } => GateDecision::Refuse {
                reason,
                lock: lock_extension,
            },
        }
    }

    fn ended(
        &mut self,
        now: Millis,
        ext: &str,
        dialled: &str,
        trunk: Option<&str>,
        talk_secs: u64,
    ) {
        let mut p = self.policy.lock().unwrap_or_else(PoisonError::into_inner);
        p.call_ended(now, ext, dialled, trunk, talk_secs);
    }
}
