//! A small TTL cache for token checks and code lookups, so the webhook hot path asks the
//! registry only once per key and TTL. Bounded: when full, it is cleared rather than grown. And
//! [`SingleFlight`], so the misses of one key at one moment make one registry call between them.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt, Shared};

pub struct TtlCache<K, V> {
    ttl: Duration,
    capacity: usize,
    entries: RwLock<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            entries: RwLock::new(HashMap::new()),
        }
    }

    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        match entries.get(key) {
            Some((at, v)) if at.elapsed() < self.ttl => Some(v.clone()),
            _ => None,
        }
    }

    /// An entry past its TTL but younger than `max_age`: what the ingress falls back on while
    /// the registry cannot be reached, so webhooks keep flowing through a registry restart.
    pub fn get_stale<Q>(&self, key: &Q, max_age: Duration) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        match entries.get(key) {
            Some((at, v)) if at.elapsed() < max_age => Some(v.clone()),
            _ => None,
        }
    }

    pub fn insert(&self, key: K, value: V) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(key, (Instant::now(), value));
    }

    pub fn remove<Q>(&self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// Lookups of one key that miss at the same moment share one call: when a hot code's (or
/// token's) entry expires under load, every request in flight misses it at once, and each would
/// otherwise ask the registry for itself. The call runs on whichever of its waiters polls it. The
/// first waiter to finish, or to be dropped (its client went away, its deadline passed), forgets
/// it, so the next miss makes a new call and the map holds only calls that someone still awaits:
/// a flood of requests with unknown tokens, each dropped mid-call, leaves nothing behind.
pub struct SingleFlight<K, V> {
    calls: Mutex<HashMap<K, Shared<BoxFuture<'static, V>>>>,
}

impl<K: Eq + Hash + Clone, V: Clone + Send + Sync + 'static> SingleFlight<K, V> {
    pub fn new() -> Self {
        Self {
            calls: Mutex::new(HashMap::new()),
        }
    }

    /// The answer of the call for `key` in flight, or of a new one that `start` makes.
    pub async fn call<F>(&self, key: &K, start: impl FnOnce() -> F) -> V
    where
        F: Future<Output = V> + Send + 'static,
    {
        let call = {
            let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
            match calls.get(key) {
                Some(call) => call.clone(),
                None => {
                    let call = start().boxed().shared();
                    calls.insert(key.clone(), call.clone());
                    call
                }
            }
        };
        let forget = Forget {
            calls: &self.calls,
            key,
            call,
        };
        forget.call.clone().await
    }
}

/// Removes its call from the map when dropped, if the map still holds that call.
struct Forget<'a, K: Eq + Hash, V> {
    calls: &'a Mutex<HashMap<K, Shared<BoxFuture<'static, V>>>>,
    key: &'a K,
    call: Shared<BoxFuture<'static, V>>,
}

impl<K: Eq + Hash, V> Drop for Forget<'_, K, V> {
    fn drop(&mut self) {
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        if calls.get(self.key).is_some_and(|c| c.ptr_eq(&self.call)) {
            calls.remove(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn misses_at_the_same_moment_share_one_call_and_a_later_miss_makes_its_own() {
        let flight = Arc::new(SingleFlight::<String, u32>::new());
        let made = Arc::new(AtomicUsize::new(0));
        let ask = |key: &'static str| {
            let (flight, made) = (flight.clone(), made.clone());
            tokio::spawn(async move {
                flight
                    .call(&key.to_string(), || async move {
                        made.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        7
                    })
                    .await
            })
        };
        let waiting: Vec<_> = (0..20).map(|_| ask("code")).collect();
        let other = ask("other");
        for w in waiting {
            assert_eq!(w.await.unwrap(), 7);
        }
        assert_eq!(other.await.unwrap(), 7);
        // One call for the 20 misses of "code", one for "other".
        assert_eq!(made.load(Ordering::SeqCst), 2);
        assert!(flight.calls.lock().unwrap().is_empty());
        assert_eq!(ask("code").await.unwrap(), 7);
        assert_eq!(made.load(Ordering::SeqCst), 3);

        // A waiter dropped mid-call (its client went away) takes the call out with it.
        let dropped = ask("gone");
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(flight.calls.lock().unwrap().len(), 1);
        dropped.abort();
        assert!(dropped.await.unwrap_err().is_cancelled());
        assert!(flight.calls.lock().unwrap().is_empty());
    }

    #[test]
    fn entries_expire_and_capacity_is_bounded() {
        let c = TtlCache::new(Duration::from_millis(30), 2);
        c.insert("a".to_string(), 1);
        assert_eq!(c.get("a"), Some(1));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(c.get("a"), None);
        c.insert("a".to_string(), 1);
        c.insert("b".to_string(), 2);
        c.insert("c".to_string(), 3);
        assert!(c.entries.read().unwrap().len() <= 2);
        assert_eq!(c.get("c"), Some(3));
        c.remove("c");
        assert_eq!(c.get("c"), None);
    }

    #[test]
    fn expired_entries_stay_available_as_stale_for_a_while() {
        let c = TtlCache::new(Duration::from_millis(10), 10);
        c.insert("a".to_string(), 1);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(c.get("a"), None);
        assert_eq!(c.get_stale("a", Duration::from_secs(60)), Some(1));
        assert_eq!(c.get_stale("a", Duration::from_millis(15)), None);
    }

    #[test]
    fn a_zero_ttl_caches_nothing() {
        let c = TtlCache::new(Duration::ZERO, 10);
        c.insert(1, 1);
        assert_eq!(c.get(&1), None);
    }
}
