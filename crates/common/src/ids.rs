//! Resource ids: a kind prefix and a UUID, so a misplaced id is caught with a helpful message.
use uuid::Uuid;

use crate::validate::ValidationError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Order,
    Payment,
    Shipment,
}

impl IdKind {
    pub const fn prefix(self) -> &'static str {
        match self {
            IdKind::Order => "ord-",
            IdKind::Payment => "pay-",
            IdKind::Shipment => "shp-",
        }
    }

    /// A fresh id of this kind: a version 7 UUID, whose first 48 bits are the time in
    /// milliseconds (the rest random). Ids made one after the other sort one after the other,
    /// so the stores' indexes on ids (and on payments' and shipments' order ids) grow at their
    /// end instead of touching a random page for every new record.
    pub fn generate(self) -> String {
        format!("{}{}", self.prefix(), Uuid::now_v7())
    }

    /// Checks that `value` is an id of this kind; `field` names it in the error.
    pub fn check(self, field: &'static str, value: &str) -> Result<(), ValidationError> {
        if value.is_empty() {
            return Err(ValidationError::new(field, "is required"));
        }
        // Only the canonical spelling (lower-case, hyphenated): ids are keys, and the same UUID
        // spelled another way must not name another record.
        let well_formed = value.strip_prefix(self.prefix()).is_some_and(|rest| {
            Uuid::try_parse(rest).is_ok_and(|uuid| uuid.hyphenated().to_string() == rest)
        });
        if well_formed {
            return Ok(());
        }
        Err(ValidationError::new(
            field,
            format!(
                "must look like '{}' followed by a UUID, got '{}'",
                self.prefix(),
                crate::validate::shorten(value)
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_check() {
        for kind in [IdKind::Order, IdKind::Payment, IdKind::Shipment] {
            assert!(kind.check("id", &kind.generate()).is_ok());
        }
    }

    #[test]
    fn generated_ids_sort_in_the_order_they_were_made() {
        let first = IdKind::Order.generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(IdKind::Order.generate() > first);
    }

    #[test]
    fn wrong_kind_or_shape_is_refused() {
        let order = IdKind::Order.generate();
        assert!(IdKind::Payment.check("payment_id", &order).is_err());
        assert!(IdKind::Order.check("order_id", "ord-123").is_err());
        assert!(IdKind::Order.check("order_id", "").is_err());
        let canonical = IdKind::Order.generate();
        let rest = &canonical[4..];
        for other_spelling in [
            format!("ord-{}", rest.to_uppercase()),
            format!("ord-{}", rest.replace('-', "")),
            format!("ord-{{{rest}}}"),
            format!("ord-urn:uuid:{rest}"),
        ] {
            assert!(
                IdKind::Order.check("order_id", &other_spelling).is_err(),
                "{other_spelling}"
            );
        }
    }
}
