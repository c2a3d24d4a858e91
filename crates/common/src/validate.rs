//! Field checks shared by the services. Messages name the field and say what is expected.
use std::fmt;

/// A request field that is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {message}")]
pub struct ValidationError {
    pub field: &'static str,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: &'static str, message: impl fmt::Display) -> Self {
        Self {
            field,
            message: message.to_string(),
        }
    }
}

/// Non-empty text of at most `max` characters.
pub fn text(field: &'static str, value: &str, max: usize) -> Result<(), ValidationError> {
    if value.trim().is_empty() {
        return Err(ValidationError::new(field, "is required"));
    }
    let len = value.chars().count();
    if len > max {
        return Err(ValidationError::new(
            field,
            format!("must be at most {max} characters, got {len}"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// An ISO 4217 style code: three upper-case ASCII letters.
pub fn currency(field: &'static str, value: &str) -> Result<(), ValidationError> {
    if value.len() == 3 && value.bytes().all(|b| b.is_ascii_uppercase()) {
        return Ok(());
    }
    Err(ValidationError::new(
        field,
        format!(
            "must be three upper-case letters such as 'EUR', got '{}'",
            shorten(value)
        ),
    ))
}

/// A strictly positive amount in minor units.
pub fn positive_amount(field: &'static str, value: i64) -> Result<(), ValidationError> {
    if value > 0 {
        return Ok(());
    }
    Err(ValidationError::new(
        field,
        format!("must be at least 1 (minor units), got {value}"),
    ))
}

/// Cuts a hostile value down to something fit for an error message.
pub fn shorten(value: &str) -> String {
    const MAX: usize = 64;
    if value.chars().count() <= MAX {
        return value.escape_debug().to_string();
    }
    let head: String = value.chars().take(MAX).collect();
    format!("{}…", head.escape_debug())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_limits() {
        assert!(text("user_id", "alice", 8).is_ok());
        assert!(text("user_id", "", 8).is_err());
        assert!(text("user_id", "   ", 8).is_err());
        assert!(text("user_id", "123456789", 8).is_err());
        assert!(text("user_id", "a\u{0}b", 8).is_err());
    }

    #[test]
    fn currencies() {
        assert!(currency("currency", "EUR").is_ok());
        for bad in ["eur", "EURO", "", "E1R"] {
            assert!(currency("currency", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn amounts_and_shortening() {
        assert!(positive_amount("amount_minor", 1).is_ok());
        assert!(positive_amount("amount_minor", 0).is_err());
        assert!(positive_amount("amount_minor", -5).is_err());
        assert!(shorten(&"x".repeat(1000)).chars().count() < 70);
    }
}
