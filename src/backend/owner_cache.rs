//! Owners a ledger already looked up, so that the check on every get and
//! delete is a hash lookup instead of a store read (a read transaction whose
//! tracker lock every worker takes, or a Redis round trip) and a JSON parse
//! of the stored record. With the owner, the mirror's spend state as last
//! read, so that an answer that repeats what the mirror knows (most gets) is
//! recognised the same way.
//!
//! Only owners found in the store are kept, never "no such task" (a task can
//! be created a moment later). Whoever changes an owner drops the entry after
//! the change is committed: the embedded ledger's writer for its own writes,
//! and for Redis also the invalidations Redis pushes for every replica's
//! writes (`backend::redis::tracking`). A lookup that read the store before
//! that must not put its stale answer back afterwards: every invalidation
//! moves a generation counter, and an answer is kept only if the generation
//! it was read under is still the current one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use crate::spend::TaskSpend;

/// Most owners kept. A sidecar's working set (the tasks its tenants poll) is
/// far smaller; past this the cache starts over rather than growing.
const CAPACITY: usize = 16_384;

#[derive(Debug)]
struct Known {
    owner: Box<str>,
    spend: Option<TaskSpend>,
}

#[derive(Debug, Default)]
pub(crate) struct OwnerCache {
    owners: RwLock<HashMap<Box<str>, Known>>,
    /// Moved (under the write lock) by every invalidation.
    generation: AtomicU64,
}

/// Where a lookup stands before it reads the store.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Generation(u64);

impl OwnerCache {
    /// The owner check from memory, with the spend when the tenant owns the task.
    pub(crate) fn check(&self, task_id: &str, tenant: &str) -> Option<crate::ledger::Ownership> {
        let owners = self.owners.read().unwrap_or_else(PoisonError::into_inner);
        owners.get(task_id).map(|known| {
            let owns = *known.owner == *tenant;
            crate::ledger::Ownership {
                owns,
                spend: known.spend.clone().filter(|_| owns),
            }
        })
    }

    /// The task's spend as last read, when known.
    pub(crate) fn spend(&self, task_id: &str) -> Option<TaskSpend> {
        let owners = self.owners.read().unwrap_or_else(PoisonError::into_inner);
        owners.get(task_id).and_then(|known| known.spend.clone())
    }

    /// Taken before reading the store, for [`OwnerCache::remember`].
    pub(crate) fn generation(&self) -> Generation {
        Generation(self.generation.load(Ordering::Acquire))
    }

    /// Keeps the owner and spend read from the store, unless an
    /// invalidation happened since `read_under` was taken (the answer may
    /// predate it).
    pub(crate) fn remember_spend(&self, read_under: Generation, task_id: &str, owner: &str, spend: TaskSpend) {
        let mut owners = self.owners.write().unwrap_or_else(PoisonError::into_inner);
        if self.generation.load(Ordering::Acquire) != read_under.0 {
            return;
        }
        if owners.len() >= CAPACITY {
            owners.clear();
        }
        owners.insert(
            task_id.into(),
            Known {
                owner: owner.into(),
                spend: Some(spend),
            },
        );
    }

    /// Forgets these tasks' owners (after a commit that may have changed them).
    pub(crate) fn forget<'a>(&self, task_ids: impl IntoIterator<Item = &'a str>) {
        let mut owners = self.owners.write().unwrap_or_else(PoisonError::into_inner);
        self.generation.fetch_add(1, Ordering::AcqRel);
        for id in task_ids {
            owners.remove(id);
        }
    }

    /// Forgets every owner (after a sweep batch that failed part way).
    pub(crate) fn forget_all(&self) {
        let mut owners = self.owners.write().unwrap_or_else(PoisonError::into_inner);
        self.generation.fetch_add(1, Ordering::AcqRel);
        owners.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owns(cache: &OwnerCache, task_id: &str, tenant: &str) -> Option<bool> {
        cache.check(task_id, tenant).map(|o| o.owns)
    }

    fn remember(cache: &OwnerCache, read_under: Generation, task_id: &str, owner: &str) {
        cache.remember_spend(read_under, task_id, owner, TaskSpend::default());
    }

    #[test]
    fn known_owners_answer_for_the_owner_only() {
        let cache = OwnerCache::default();
        assert_eq!(owns(&cache, "cgt-1", "alpha"), None);
        remember(&cache, cache.generation(), "cgt-1", "alpha");
        assert_eq!(owns(&cache, "cgt-1", "alpha"), Some(true));
        assert_eq!(owns(&cache, "cgt-1", "beta"), Some(false));
        assert_eq!(owns(&cache, "cgt-1", "alph"), Some(false));
        cache.forget(["cgt-1"]);
        assert_eq!(owns(&cache, "cgt-1", "alpha"), None);
    }

    /// A lookup that read the store before a grant moved the task must not
    /// put the old owner back after the writer forgot it.
    #[test]
    fn an_answer_read_before_an_invalidation_is_not_kept() {
        let cache = OwnerCache::default();
        let before = cache.generation();
        // The writer commits a grant of cgt-1 to beta and forgets it…
        cache.forget(["cgt-1"]);
        // …then the slower lookup, which read "alpha", tries to keep it.
        remember(&cache, before, "cgt-1", "alpha");
        assert_eq!(owns(&cache, "cgt-1", "alpha"), None);
        remember(&cache, cache.generation(), "cgt-2", "alpha");
        cache.forget_all();
        assert_eq!(owns(&cache, "cgt-2", "alpha"), None);
    }

    #[test]
    fn the_spend_is_kept_with_the_owner_and_forgotten_with_it() {
        let cache = OwnerCache::default();
        let spend = TaskSpend {
            reserved_tokens: 7,
            ..TaskSpend::default()
        };
        cache.remember_spend(cache.generation(), "cgt-1", "alpha", spend.clone());
        assert_eq!(cache.spend("cgt-1"), Some(spend.clone()));
        assert_eq!(cache.check("cgt-1", "alpha").unwrap().spend, Some(spend));
        assert_eq!(
            cache.check("cgt-1", "beta").unwrap().spend,
            None,
            "only the owner sees it"
        );
        let stale = cache.generation();
        cache.forget(["cgt-1"]);
        cache.remember_spend(stale, "cgt-1", "alpha", TaskSpend::default());
        assert_eq!(cache.spend("cgt-1"), None, "read before the writer's commit");
    }

    #[test]
    fn the_cache_starts_over_instead_of_growing_past_its_capacity() {
        let cache = OwnerCache::default();
        for n in 0..=CAPACITY {
            remember(&cache, cache.generation(), &format!("cgt-{n}"), "alpha");
        }
        let kept = cache.owners.read().unwrap().len();
        assert!(kept <= CAPACITY, "{kept} entries");
        assert_eq!(owns(&cache, &format!("cgt-{CAPACITY}"), "alpha"), Some(true));
    }
}
