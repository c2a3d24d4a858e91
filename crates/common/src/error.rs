//! One table from domain errors to gRPC status codes. Each service's error enum says which kind
//! of failure it is; this module alone decides what a client sees.
use tonic::{Code, Status};

/// What went wrong, in the terms a caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request itself is wrong: fix it before sending it again.
    InvalidArgument,
    /// The named resource does not exist.
    NotFound,
    /// The resource exists but is in a state that forbids the call.
    FailedPrecondition,
    /// Try again later: nothing was decided.
    Unavailable,
    /// A bug or a broken dependency on our side.
    Internal,
    /// Stored data cannot be read: a retry reads the same bytes, so a person must repair it.
    DataLoss,
}

impl ErrorKind {
    pub fn code(self) -> Code {
        match self {
            ErrorKind::InvalidArgument => Code::InvalidArgument,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::FailedPrecondition => Code::FailedPrecondition,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::Internal => Code::Internal,
            ErrorKind::DataLoss => Code::DataLoss,
        }
    }
}

/// Implemented by each service's error enum.
pub trait Classify: std::error::Error {
    fn kind(&self) -> ErrorKind;
}

/// Turns a domain error into the status a client receives; internal details are logged, not sent.
pub fn to_status<E: Classify>(err: &E) -> Status {
    match err.kind() {
        ErrorKind::Internal => {
            tracing::error!(error = %err, "internal error");
            Status::internal("internal error; see the service log")
        }
        ErrorKind::DataLoss => {
            tracing::error!(error = %err, "stored data cannot be read");
            Status::data_loss(
                "a stored record cannot be read; retrying will not help: the service log names it for the operator",
            )
        }
        kind => Status::new(kind.code(), err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("secret detail")]
    struct Boom;
    impl Classify for Boom {
        fn kind(&self) -> ErrorKind {
            ErrorKind::Internal
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("row 42 holds secret bytes")]
    struct Rotten;
    impl Classify for Rotten {
        fn kind(&self) -> ErrorKind {
            ErrorKind::DataLoss
        }
    }

    #[test]
    fn unreadable_data_is_data_loss_not_a_retry() {
        let status = to_status(&Rotten);
        assert_eq!(status.code(), Code::DataLoss);
        assert!(!status.message().contains("secret"));
        assert!(status.message().contains("retrying will not help"));
    }

    #[test]
    fn internal_errors_hide_their_detail() {
        let status = to_status(&Boom);
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
    }
}
