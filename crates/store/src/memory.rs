//! The in-memory repository: tests and throwaway runs.
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};

use hashbrown::HashTable;

use crate::{ListQuery, Record, Repository, StoreError};

/// In-memory repository: two tables behind a mutex that is never held across an `.await`.
#[derive(Debug)]
pub struct MemoryRepository<R> {
    inner: Mutex<Inner<R>>,
}

impl<R> Default for MemoryRepository<R> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
        }
    }
}

/// Each entry keeps the hash of its id (or key), computed once. A table that grows moves its
/// entries by that stored hash: with `std`'s `HashMap` every growth hashed every key again,
/// reading each from its own allocation, a cache miss apiece; that rehashing was 5% of
/// order-service's samples in the benchmark (BENCHMARKS.md).
#[derive(Debug)]
struct Inner<R> {
    /// `RandomState`: ids and keys come from callers, so their hashes stay keyed.
    hasher: std::hash::RandomState,
    // Boxed: a slot holds a hash and a pointer, not the record (an order's slot was 224
    // bytes), so the table's empty slots and its growth cost pointers, not records:
    // order-service's peak in the benchmark fell from 51 to 42 MiB (BENCHMARKS.md).
    by_id: HashTable<(u64, Box<R>)>,
    by_key: HashTable<KeyEntry>,
}

/// A record's key, and its id with the id's hash (a lookup by key then finds the record without
/// hashing the id again).
#[derive(Debug)]
struct KeyEntry {
    hash: u64,
    key: Box<str>,
    id_hash: u64,
    id: Box<str>,
}

impl<R> Default for Inner<R> {
    fn default() -> Self {
        Self {
            hasher: std::hash::RandomState::new(),
            by_id: HashTable::new(),
            by_key: HashTable::new(),
        }
    }
}

impl<R: Record> Inner<R> {
    fn hash(&self, text: &str) -> u64 {
        self.hasher.hash_one(text)
    }

    fn get(&self, id: &str) -> Option<&R> {
        self.by_id
            .find(self.hash(id), |(_, record)| record.id() == id)
            .map(|(_, record)| record.as_ref())
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut R> {
        let hash = self.hash(id);
        self.by_id
            .find_mut(hash, |(_, record)| record.id() == id)
            .map(|(_, record)| record.as_mut())
    }

    fn get_by_key(&self, key: &str) -> Option<&R> {
        let entry = self
            .by_key
            .find(self.hash(key), |entry| &*entry.key == key)?;
        self.by_id
            .find(entry.id_hash, |(_, record)| record.id() == &*entry.id)
            .map(|(_, record)| record.as_ref())
    }

    /// Adds `record`, whose id and key are in neither table.
    fn insert(&mut self, record: R) {
        let key_hash = self.hash(record.key());
        let id_hash = self.hash(record.id());
        let entry = KeyEntry {
            hash: key_hash,
            key: record.key().into(),
            id_hash,
            id: record.id().into(),
        };
        self.by_key
            .insert_unique(key_hash, entry, |entry| entry.hash);
        self.by_id
            .insert_unique(id_hash, (id_hash, Box::new(record)), |(hash, _)| *hash);
    }

    fn records(&self) -> impl Iterator<Item = &R> {
        self.by_id.iter().map(|(_, record)| record.as_ref())
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
        if let Some(existing) = inner.get_by_key(record.key()) {
            return Ok((existing.clone(), false));
        }
        inner.insert(record.clone());
        Ok((record, true))
    }

    async fn get(&self, id: &str) -> Result<Option<R>, StoreError> {
        Ok(self.lock().get(id).cloned())
    }

    async fn get_by_key(&self, key: &str) -> Result<Option<R>, StoreError> {
        Ok(self.lock().get_by_key(key).cloned())
    }

    async fn update<E, F>(&self, id: &str, mut transition: F) -> Result<Option<R>, E>
    where
        E: From<StoreError> + Send,
        F: FnMut(&R) -> Result<Option<R>, E> + Send,
    {
        let mut inner = self.lock();
        let Some(current) = inner.get_mut(id) else {
            return Ok(None);
        };
        if let Some(next) = transition(current)? {
            *current = next;
        }
        Ok(Some(current.clone()))
    }

    async fn all(&self) -> Result<Vec<R>, StoreError> {
        Ok(self.lock().records().cloned().collect())
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<R>, StoreError> {
        let mut found: Vec<R> = self
            .lock()
            .records()
            .filter(|record| query.matches(*record))
            .cloned()
            .collect();
        found.sort_by(|a, b| (a.updated_at(), a.id()).cmp(&(b.updated_at(), b.id())));
        found.truncate(query.limit);
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{Item, item};

    /// Every record is found by its id and by its key after the tables have grown many times
    /// (growth moves entries by their stored hashes).
    #[tokio::test]
    async fn records_are_found_after_the_tables_grow() {
        let repo = MemoryRepository::<Item>::default();
        let n = 5_000;
        for i in 0..n {
            let (_, inserted) = repo
                .insert_or_get(item(&format!("id-{i}"), &format!("key-{i}")))
                .await
                .unwrap();
            assert!(inserted);
        }
        for i in 0..n {
            let id = format!("id-{i}");
            assert_eq!(repo.get(&id).await.unwrap().unwrap().id, id);
            let by_key = repo.get_by_key(&format!("key-{i}")).await.unwrap();
            assert_eq!(by_key.unwrap().id, id);
            // A second insert under the same key finds the first.
            let (existing, inserted) = repo
                .insert_or_get(item("other", &format!("key-{i}")))
                .await
                .unwrap();
            assert_eq!((existing.id.as_str(), inserted), (id.as_str(), false));
        }
        assert_eq!(repo.get("id-missing").await.unwrap(), None);
        assert_eq!(repo.all().await.unwrap().len(), n);
    }
}
