//! Which store a service keeps its records in (`<PREFIX>_STORE__*`), and opening it.
use serde::Deserialize;

use crate::postgres::PgStore;
use crate::sql::SqlDatabase;
use crate::sqlite::{SqliteStore, Synchronous};
use crate::{Record, Store, StoreError};

/// Which store a service keeps its records in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// SQLite in `data_dir`: the embedded default, one replica.
    #[default]
    Sqlite,
    /// PostgreSQL at `url` (or `DATABASE_URL`): several replicas can share it.
    Postgres,
    /// Nothing survives a restart: tests and throwaway runs.
    Memory,
}

/// Store settings (`<PREFIX>_STORE__*`). `DATABASE_URL`, when set, selects PostgreSQL.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    pub backend: Backend,
    /// Directory of the SQLite file `<service>.sqlite`.
    pub data_dir: std::path::PathBuf,
    /// `full` survives a power cut; `normal` (WAL) only a crash of the process, and is faster.
    pub sqlite_synchronous: Synchronous,
    /// PostgreSQL URL; `DATABASE_URL` is the usual place for it (a Secret in Kubernetes).
    pub url: Option<String>,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            backend: Backend::Sqlite,
            data_dir: "data".into(),
            sqlite_synchronous: Synchronous::Full,
            url: None,
        }
    }
}

impl StoreSettings {
    /// Opens (and migrates) the store of `R` for service `name`.
    pub async fn open<R: Record>(&self, name: &str) -> Result<Store<R>, StoreError> {
        let database_url = std::env::var("DATABASE_URL")
            .ok()
            .filter(|u| !u.trim().is_empty());
        let url = self.url.clone().or(database_url);
        match (self.backend, url) {
            (Backend::Memory, _) => Ok(Store::default()),
            (_, Some(url))
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) =>
            {
                Err(StoreError::Unavailable(format!(
                    "the database URL must start with postgres:// (SQLite is store.backend=sqlite with store.data_dir), got {}",
                    url.split_once("://")
                        .map_or("no scheme", |(scheme, _)| scheme)
                )))
            }
            (_, Some(url)) => {
                let postgres = PgStore::connect(&url).await?;
                postgres.migrate::<R>().await?;
                Ok(Store::Postgres(postgres.repository()))
            }
            (Backend::Postgres, None) => Err(StoreError::Unavailable(
                "store.backend is postgres but neither store.url nor DATABASE_URL is set".into(),
            )),
            (Backend::Sqlite, None) => {
                let sqlite =
                    SqliteStore::open(&self.data_dir, name, self.sqlite_synchronous).await?;
                sqlite.migrate::<R>().await?;
                Ok(Store::Sqlite(sqlite.repository()))
            }
        }
    }
}

/// What `saga_common::server::run_service` calls to open a service's store.
impl<R: Record> saga_common::settings::OpenStore<Store<R>> for StoreSettings {
    type Error = StoreError;

    async fn open_store(&self, service: &str) -> Result<Store<R>, StoreError> {
        self.open(service).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::Item;

    #[tokio::test]
    async fn a_database_url_that_is_not_postgres_is_refused() {
        let settings = StoreSettings {
            url: Some("sqlite://x.db".into()),
            ..StoreSettings::default()
        };
        let err = settings.open::<Item>("test").await.unwrap_err();
        assert!(err.to_string().contains("postgres://"), "{err}");
        assert!(err.to_string().contains("got sqlite"), "{err}");
    }
}
