//! Settings: defaults < optional config file (`--config FILE`) < environment variables.
//!
//! Environment variables are the service's prefix, `_`, then the field path with `__` between
//! levels: `PAYMENT_LISTEN_ADDR`, `PAYMENT_FAULTS__FAILURE_RATE`.
use std::path::Path;

use config::{Config, Environment, File};
use serde::de::DeserializeOwned;

/// Process exit code for bad configuration (EX_USAGE from sysexits.h).
pub const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot load settings: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid setting: {0}")]
    Invalid(String),
}

/// Settings that can check themselves after loading.
pub trait Settings: DeserializeOwned {
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Loads `T` from its defaults, then `file` if given, then `<prefix>_*` environment variables.
pub fn load<T: Settings>(prefix: &str, file: Option<&Path>) -> Result<T, ConfigError> {
    load_with(prefix, file, None)
}

/// As [`load`], reading variables from `vars` instead of the process environment (for tests).
pub fn load_with<T: Settings>(
    prefix: &str,
    file: Option<&Path>,
    vars: Option<std::collections::HashMap<String, String>>,
) -> Result<T, ConfigError> {
    let mut builder = Config::builder();
    if let Some(file) = file {
        builder = builder.add_source(File::from(file).required(true));
    }
    let env = Environment::with_prefix(prefix)
        .prefix_separator("_")
        .separator("__")
        .try_parsing(true)
        .source(vars);
    let settings: T = builder.add_source(env).build()?.try_deserialize()?;
    settings.check().map_err(ConfigError::Invalid)?;
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(default)]
    struct Demo {
        port: u16,
        nested: Nested,
    }
    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(default)]
    struct Nested {
        rate: f64,
    }
    impl Default for Demo {
        fn default() -> Self {
            Self {
                port: 7,
                nested: Nested::default(),
            }
        }
    }
    impl Settings for Demo {
        fn check(&self) -> Result<(), String> {
            if self.nested.rate > 1.0 {
                return Err("rate too high".into());
            }
            Ok(())
        }
    }

    fn vars(pairs: &[(&str, &str)]) -> Option<std::collections::HashMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn defaults_then_file_then_env() {
        let none: Demo = load_with("DEMO", None, vars(&[])).unwrap();
        assert_eq!(none, Demo::default());

        let dir = std::env::temp_dir().join(format!("saga-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("demo.toml");
        std::fs::write(&file, "port = 9\n[nested]\nrate = 0.5\n").unwrap();
        let from_file: Demo = load_with("DEMO", Some(&file), vars(&[])).unwrap();
        assert_eq!(from_file.port, 9);

        let env: Demo =
            load_with("DEMO", Some(&file), vars(&[("DEMO_NESTED__RATE", "0.25")])).unwrap();
        assert_eq!((env.port, env.nested.rate), (9, 0.25));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_values_are_reported() {
        let err = load_with::<Demo>("DEMO", None, vars(&[("DEMO_PORT", "many")])).unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
        let err = load_with::<Demo>("DEMO", None, vars(&[("DEMO_NESTED__RATE", "3")])).unwrap_err();
        assert!(err.to_string().contains("rate too high"), "{err}");
    }
}
