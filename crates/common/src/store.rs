//! The repository every service keeps its resources in. Each record has an id and a unique key
//! (an order's idempotency key; a payment's or shipment's order id): the key is what makes the
//! mutating calls idempotent, because a second insert with the same key returns the first record.
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// A stored resource.
pub trait Record: Clone + Send + Sync + 'static {
    fn id(&self) -> &str;
    /// At most one record per key.
    fn key(&self) -> &str;
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// What a transition returns: the new record, or `None` to leave it unchanged.
pub type Transition<'a, R, E> = &'a mut dyn FnMut(&R) -> Result<Option<R>, E>;

/// Storage for one kind of record. Implementations make each call atomic.
pub trait Repository<R: Record>: Send + Sync {
    /// Stores `record` unless one with the same key exists. Returns the stored record and
    /// whether it is the one just inserted.
    fn insert_or_get(&self, record: R) -> Result<(R, bool), StoreError>;
    fn get(&self, id: &str) -> Result<Option<R>, StoreError>;
    fn get_by_key(&self, key: &str) -> Result<Option<R>, StoreError>;
    /// Applies `transition` to record `id` atomically; `Ok(None)` if there is no such record.
    fn update<E: From<StoreError>>(
        &self,
        id: &str,
        transition: Transition<'_, R, E>,
    ) -> Result<Option<R>, E>
    where
        Self: Sized;
    /// Every record, for read-back checks and tests.
    fn all(&self) -> Result<Vec<R>, StoreError>;
}

/// How a payment or shipment is named in a request: by its own id, or by its order (the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Id(String),
    Key(String),
}

/// Looks a record up by id or by key.
pub fn find<R: Record>(
    repo: &impl Repository<R>,
    target: &Target,
) -> Result<Option<R>, StoreError> {
    match target {
        Target::Id(id) => repo.get(id),
        Target::Key(key) => repo.get_by_key(key),
    }
}

/// In-memory repository: a map behind a mutex that is never held across an `.await`.
#[derive(Debug)]
pub struct MemoryRepository<R> {
    inner: Mutex<Inner<R>>,
}

#[derive(Debug)]
struct Inner<R> {
    by_id: HashMap<String, R>,
    id_by_key: HashMap<String, String>,
}

impl<R> Default for MemoryRepository<R> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                by_id: HashMap::new(),
                id_by_key: HashMap::new(),
            }),
        }
    }
}

impl<R> MemoryRepository<R> {
    fn lock(&self) -> MutexGuard<'_, Inner<R>> {
        // A panic while holding the lock cannot leave a half-written map: every write is one insert.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<R: Record> Repository<R> for MemoryRepository<R> {
    fn insert_or_get(&self, record: R) -> Result<(R, bool), StoreError> {
        let mut inner = self.lock();
        if let Some(existing) = inner
            .id_by_key
            .get(record.key())
            .and_then(|id| inner.by_id.get(id))
        {
            return Ok((existing.clone(), false));
        }
        inner
            .id_by_key
            .insert(record.key().to_owned(), record.id().to_owned());
        inner.by_id.insert(record.id().to_owned(), record.clone());
        Ok((record, true))
    }

    fn get(&self, id: &str) -> Result<Option<R>, StoreError> {
        Ok(self.lock().by_id.get(id).cloned())
    }

    fn get_by_key(&self, key: &str) -> Result<Option<R>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .id_by_key
            .get(key)
            .and_then(|id| inner.by_id.get(id))
            .cloned())
    }

    fn update<E: From<StoreError>>(
        &self,
        id: &str,
        transition: Transition<'_, R, E>,
    ) -> Result<Option<R>, E> {
        let mut inner = self.lock();
        let Some(current) = inner.by_id.get_mut(id) else {
            return Ok(None);
        };
        if let Some(next) = transition(current)? {
            *current = next;
        }
        Ok(Some(current.clone()))
    }

    fn all(&self) -> Result<Vec<R>, StoreError> {
        Ok(self.lock().by_id.values().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct Item {
        id: String,
        key: String,
        n: u32,
    }
    impl Record for Item {
        fn id(&self) -> &str {
            &self.id
        }
        fn key(&self) -> &str {
            &self.key
        }
    }
    fn item(id: &str, key: &str) -> Item {
        Item {
            id: id.into(),
            key: key.into(),
            n: 0,
        }
    }

    #[test]
    fn second_insert_with_same_key_returns_the_first() {
        let repo = MemoryRepository::default();
        assert_eq!(
            repo.insert_or_get(item("a", "k")).unwrap(),
            (item("a", "k"), true)
        );
        assert_eq!(
            repo.insert_or_get(item("b", "k")).unwrap(),
            (item("a", "k"), false)
        );
        assert_eq!(repo.get("b").unwrap(), None);
        assert_eq!(repo.get_by_key("k").unwrap(), Some(item("a", "k")));
        assert_eq!(repo.all().unwrap().len(), 1);
    }

    #[test]
    fn update_applies_or_keeps() {
        let repo = MemoryRepository::default();
        repo.insert_or_get(item("a", "k")).unwrap();
        let bumped = repo
            .update::<StoreError>("a", &mut |r: &Item| {
                Ok(Some(Item {
                    n: r.n + 1,
                    ..r.clone()
                }))
            })
            .unwrap();
        assert_eq!(bumped.map(|r| r.n), Some(1));
        let kept = repo.update::<StoreError>("a", &mut |_| Ok(None)).unwrap();
        assert_eq!(kept.map(|r| r.n), Some(1));
        assert!(
            repo.update::<StoreError>("zz", &mut |_| Ok(None))
                .unwrap()
                .is_none()
        );
    }
}
