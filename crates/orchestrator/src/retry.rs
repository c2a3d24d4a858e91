//! Retries of transient failures: capped exponential backoff with jitter, a deadline per
//! attempt. Business failures are never retried.
use std::future::Future;
use std::time::Duration;

use serde::Deserialize;
use tonic::{Code, Status};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Deadline of one attempt, in milliseconds.
    pub call_timeout_ms: u64,
    /// Backoff before the second attempt, in milliseconds; doubled each time.
    pub initial_backoff_ms: u64,
    /// Longest backoff, in milliseconds.
    pub max_backoff_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            call_timeout_ms: 2_000,
            initial_backoff_ms: 20,
            max_backoff_ms: 1_000,
        }
    }
}

/// Whether a failure says nothing about the outcome and may pass if tried again. Every saga call
/// is idempotent, so a connection torn mid-call (a killed server: `Unknown`, `Cancelled`) is
/// retried like `UNAVAILABLE`.
pub fn is_transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Unknown
            | Code::Cancelled
    )
}

/// Whether a failure is a definite answer: the call did not and will not take effect.
pub fn is_definite(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::OutOfRange
            | Code::Unimplemented
    )
}

/// The last failure of a call and how many attempts it took.
#[derive(Debug, Clone)]
pub struct Failed {
    pub status: Status,
    pub attempts: u32,
}

impl Failed {
    /// The call may have taken effect: its outcome is unknown (anything but a definite
    /// refusal, `INTERNAL` included).
    pub fn outcome_unknown(&self) -> bool {
        !is_definite(self.status.code())
    }
}

impl RetryPolicy {
    pub fn check(&self, name: &str) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err(format!("{name}.max_attempts must be at least 1"));
        }
        if self.call_timeout_ms == 0 {
            return Err(format!("{name}.call_timeout_ms must be at least 1"));
        }
        if self.initial_backoff_ms > self.max_backoff_ms {
            return Err(format!(
                "{name}.initial_backoff_ms must not exceed {name}.max_backoff_ms"
            ));
        }
        Ok(())
    }

    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms)
    }

    /// Backoff before attempt `attempt + 1`: half fixed, half random, so that many sagas
    /// retrying together spread out.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .initial_backoff_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
        let capped = exp.min(self.max_backoff_ms);
        Duration::from_millis(capped / 2 + fastrand::u64(0..=capped - capped / 2))
    }

    /// Runs `call` until it succeeds, fails for good, or attempts run out. Returns the value
    /// and the number of attempts made.
    pub async fn run<T, F, Fut>(&self, mut call: F) -> Result<(T, u32), Failed>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut attempt = 1;
        loop {
            let result = match tokio::time::timeout(self.call_timeout(), call()).await {
                Ok(result) => result,
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "no answer within {} ms",
                    self.call_timeout_ms
                ))),
            };
            match result {
                Ok(value) => return Ok((value, attempt)),
                Err(status) if is_transient(status.code()) && attempt < self.max_attempts => {
                    // An event of the step's span: each failed attempt shows in its trace.
                    let backoff = self.backoff(attempt);
                    tracing::info!(
                        attempt,
                        code = ?status.code(),
                        error = status.message(),
                        retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                        "attempt failed; retrying"
                    );
                    tokio::time::sleep(backoff).await;
                    attempt += 1;
                }
                Err(status) => {
                    return Err(Failed {
                        status,
                        attempts: attempt,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn fast() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            call_timeout_ms: 50,
            initial_backoff_ms: 1,
            max_backoff_ms: 4,
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy::default();
        for attempt in 1..30 {
            let backoff = policy.backoff(attempt).as_millis() as u64;
            let cap =
                (policy.initial_backoff_ms << (attempt - 1).min(20)).min(policy.max_backoff_ms);
            assert!(
                backoff >= cap / 2 && backoff <= cap,
                "{attempt}: {backoff} vs {cap}"
            );
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried() {
        let calls = AtomicU32::new(0);
        let result = fast()
            .run(|| async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(Status::unavailable("down"))
                } else {
                    Ok(7)
                }
            })
            .await
            .unwrap();
        assert_eq!(result, (7, 3));
    }

    #[tokio::test]
    async fn business_failures_are_not_retried() {
        let calls = AtomicU32::new(0);
        let failed = fast()
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(Status::failed_precondition("no"))
            })
            .await
            .unwrap_err();
        assert_eq!((failed.attempts, calls.load(Ordering::SeqCst)), (1, 1));
        assert!(!failed.outcome_unknown());
    }

    #[tokio::test]
    async fn attempts_run_out_and_slow_calls_time_out() {
        let failed = fast()
            .run(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            })
            .await
            .unwrap_err();
        assert_eq!(failed.attempts, 4);
        assert_eq!(failed.status.code(), Code::DeadlineExceeded);
        assert!(failed.outcome_unknown());
    }
}
