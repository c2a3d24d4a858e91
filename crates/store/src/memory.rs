//! The in-memory repository: tests and throwaway runs.
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::{ListQuery, Record, Repository, StoreError};

/// In-memory repository: a map behind a mutex that is never held across an `.await`.
#[derive(Debug)]
pub struct MemoryRepository<R> {
    inner: Mutex<Inner<R>>,
}

#[derive(Debug)]
struct Inner<R> {
    // Boxed: a slot holds a key and a pointer (32 bytes), not the record (an order's slot was
    // 224), so the table's empty slots and its growth cost pointers, not records: order-service's
    // peak in the benchmark fell from 51 to 42 MiB (BENCHMARKS.md).
    by_id: HashMap<String, Box<R>>,
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
    async fn insert_or_get(&self, record: R) -> Result<(R, bool), StoreError> {
        let mut inner = self.lock();
        if let Some(existing) = inner
            .id_by_key
            .get(record.key())
            .and_then(|id| inner.by_id.get(id))
        {
            return Ok((R::clone(existing), false));
        }
        inner
            .id_by_key
            .insert(record.key().to_owned(), record.id().to_owned());
        inner
            .by_id
            .insert(record.id().to_owned(), Box::new(record.clone()));
        Ok((record, true))
    }

    async fn get(&self, id: &str) -> Result<Option<R>, StoreError> {
        Ok(self.lock().by_id.get(id).map(Box::as_ref).cloned())
    }

    async fn get_by_key(&self, key: &str) -> Result<Option<R>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .id_by_key
            .get(key)
            .and_then(|id| inner.by_id.get(id))
            .map(Box::as_ref)
            .cloned())
    }

    async fn update<E, F>(&self, id: &str, mut transition: F) -> Result<Option<R>, E>
    where
        E: From<StoreError> + Send,
        F: FnMut(&R) -> Result<Option<R>, E> + Send,
    {
        let mut inner = self.lock();
        let Some(current) = inner.by_id.get_mut(id) else {
            return Ok(None);
        };
        if let Some(next) = transition(current)? {
            **current = next;
        }
        Ok(Some(R::clone(current)))
    }

    async fn all(&self) -> Result<Vec<R>, StoreError> {
        Ok(self
            .lock()
            .by_id
            .values()
            .map(Box::as_ref)
            .cloned()
            .collect())
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<R>, StoreError> {
        let mut found: Vec<R> = self
            .lock()
            .by_id
            .values()
            .map(Box::as_ref)
            .filter(|record| query.matches(*record))
            .cloned()
            .collect();
        found.sort_by(|a, b| (a.updated_at(), a.id()).cmp(&(b.updated_at(), b.id())));
        found.truncate(query.limit);
        Ok(found)
    }
}
