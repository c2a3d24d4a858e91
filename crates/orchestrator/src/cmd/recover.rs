//! `saga-orchestrator recover`: settles every saga left PENDING past a grace period.
use std::time::Duration;

use crate::OrchestratorSettings;
use crate::cli::{Exit, Output, connect, listing_failed};
use crate::recover::Recover;
use crate::saga::Saga;

#[derive(Debug, clap::Args)]
pub struct RecoverArgs {
    /// Orders untouched for less than this are left to their live saga, e.g. `30s`, `5m`, `0s`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub older_than: Duration,
    /// List the stuck sagas, their reasons and what would be done; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Orders settled at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// `30s`, `5m`, `2h`, `250ms`, or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration such as 30s, 5m or 0s"))?;
    let seconds = match unit {
        "ms" => return Ok(Duration::from_millis(number)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("unknown unit in '{text}': use ms, s, m or h")),
    };
    Ok(Duration::from_secs(number.saturating_mul(seconds)))
}

pub async fn recover(args: RecoverArgs, settings: OrchestratorSettings) -> Result<(), Exit> {
    let participants = connect(&settings, &[]).await?;
    let saga = Saga {
        participants: &participants,
        retry: &settings.retry,
        compensation_retry: &settings.compensation_retry,
        verify: true,
    };
    let pass = Recover {
        grace: args.older_than,
        dry_run: args.dry_run,
        concurrency: usize::try_from(args.concurrency).unwrap_or(16),
    };
    let summary = pass
        .run(&saga, |found| match args.output {
            Output::Text => println!("{}", found.to_text()),
            Output::Json => println!("{}", serde_json::json!({ "order": found })),
        })
        .await
        .map_err(listing_failed)?;
    crate::metrics::stuck("recover", summary.stuck);
    match args.output {
        Output::Text => println!("{}", summary.to_text()),
        Output::Json => println!("{}", serde_json::json!({ "summary": summary })),
    }
    if summary.stuck > 0 {
        let what = if args.dry_run { "stuck" } else { "still stuck" };
        return Err(Exit::Failed(format!(
            "{} sagas {what} (see the lines above)",
            summary.stuck
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("12"), Ok(Duration::from_secs(12)));
        assert!(parse_duration("5 days").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
    }
}
