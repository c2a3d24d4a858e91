//! JSON log lines, cheap enough to leave at `info` under load.
//!
//! What made the default configuration slow (profiled at c=64): the `fmt` layer asked for every
//! INFO span, so the registry created each gRPC and saga span only to format its fields into
//! a string no JSON line printed; each line was built as a `serde_json::Map`; and each line was
//! its own `write(2)` to stderr, on the thread serving the call. So:
//! - the log layer takes events only ([`EventsOnly`]): with traces off, no span is created;
//! - a line is written straight into a reused buffer ([`JsonLogs`]);
//! - lines go to stderr from a thread of their own ([`Sink`]), many per `write(2)`, in order;
//!   a line does not wake that thread unless it sleeps idle (a wake-up per line, futex and
//!   context switch, cost more than the write it saved).
//!   Nothing is dropped: past [`BACKLOG`] bytes waiting, the caller writes them itself. The
//!   buffer is written out on [`flush`], when telemetry stops, on panic, and before an
//!   injected crash; only a `kill -9` loses the lines of the last moment.
use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

use opentelemetry::trace::TraceContextExt;
use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::layer::{Context, Filter, Layer};

/// Bytes that may wait for the log thread before a caller writes them itself.
const BACKLOG: usize = 1 << 20;

/// How long the log thread lets lines gather before writing them: a line reaches stderr at
/// most this late (or at once on [`flush`]).
const LINGER: std::time::Duration = std::time::Duration::from_millis(10);

/// A `Targets` filter (`RUST_LOG`) that never asks for spans: JSON lines do not print them,
/// and a span nobody asks for is never created.
pub(crate) struct EventsOnly(pub(crate) Targets);

impl<S> Filter<S> for EventsOnly {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        !meta.is_span() && self.0.would_enable(meta.target(), meta.level())
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if !meta.is_span() && self.0.would_enable(meta.target(), meta.level()) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Filter::<S>::max_level_hint(&self.0)
    }
}

/// One JSON object per event: `timestamp`, `level`, the event's fields, `target`, and, when
/// the event happens inside a traced span, `trace_id` and `span_id`.
pub(crate) struct JsonLogs {
    /// Whether an OpenTelemetry layer is installed: only then is there a trace id to look up.
    pub(crate) traced: bool,
}

thread_local! {
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

impl<S: Subscriber> Layer<S> for JsonLogs {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        LINE.with(|line| {
            // An event logged while formatting another (a `Debug` impl that logs) gets its own.
            let mut own = String::new();
            let mut borrowed = line.try_borrow_mut();
            let line = borrowed.as_deref_mut().unwrap_or(&mut own);
            line.clear();
            if self.format(line, event).is_ok() {
                line.push('\n');
                sink().write(line.as_bytes());
            }
            if line.capacity() > 64 * 1024 {
                *line = String::new(); // one huge line does not stay resident
            }
        });
    }
}

impl JsonLogs {
    fn format(&self, line: &mut String, event: &Event<'_>) -> fmt::Result {
        line.push_str("{\"timestamp\":\"");
        SystemTime.format_time(&mut Writer::new(line))?;
        write!(line, "\",\"level\":\"{}\"", event.metadata().level())?;
        let mut fields = Fields {
            line,
            scratch: None,
        };
        event.record(&mut fields);
        line.push_str(",\"target\":");
        string(line, event.metadata().target());
        if self.traced
            && let Some((trace_id, span_id)) = trace_ids()
        {
            write!(
                line,
                ",\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\""
            )?;
        }
        line.push('}');
        Ok(())
    }
}

/// The trace and span id of the current span, if it is sampled or at least has a context.
fn trace_ids() -> Option<(opentelemetry::trace::TraceId, opentelemetry::trace::SpanId)> {
    tracing::dispatcher::get_default(|dispatch| {
        let current = dispatch.current_span();
        let context = tracing_opentelemetry::get_otel_context(current.id()?, dispatch)?;
        let span = context.span();
        let span_context = span.span_context();
        span_context
            .is_valid()
            .then(|| (span_context.trace_id(), span_context.span_id()))
    })
}

/// Appends the event's fields as `,"name":value`.
struct Fields<'a> {
    line: &'a mut String,
    scratch: Option<String>,
}

impl Fields<'_> {
    fn key(&mut self, field: &Field) {
        self.line.push(',');
        string(self.line, field.name());
        self.line.push(':');
    }
}

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        let scratch = self.scratch.get_or_insert_with(String::new);
        scratch.clear();
        let _ = write!(scratch, "{value:?}");
        string(self.line, scratch);
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        string(self.line, value);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.line, "{value}");
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.line, "{value}");
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        let _ = write!(self.line, "{value}");
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.line, "{value}");
        } else {
            self.line.push_str("null"); // JSON has no NaN or infinity
        }
    }
}

/// Appends `value` as a JSON string.
fn string(line: &mut String, value: &str) {
    line.push('"');
    let mut plain = 0;
    for (i, c) in value.char_indices() {
        let escaped = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            c if c < ' ' => "",
            _ => continue,
        };
        line.push_str(&value[plain..i]);
        if escaped.is_empty() {
            let _ = write!(line, "\\u{:04x}", c as u32);
        } else {
            line.push_str(escaped);
        }
        plain = i + c.len_utf8();
    }
    line.push_str(&value[plain..]);
    line.push('"');
}

/// Where log lines wait for the log thread.
pub(crate) struct Sink {
    waiting: Mutex<Waiting>,
    wake: Condvar,
    /// Held while writing to stderr, so lines leave in the order they were logged.
    out: Mutex<()>,
    /// After [`flush`] at exit, callers write themselves: no thread may be left to do it.
    direct: AtomicBool,
}

struct Waiting {
    lines: Vec<u8>,
    /// The log thread waits for a line: the next one wakes it (and only that one does).
    idle: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn sink() -> &'static Arc<Sink> {
    static SINK: OnceLock<Arc<Sink>> = OnceLock::new();
    SINK.get_or_init(|| {
        let sink = Arc::new(Sink {
            waiting: Mutex::new(Waiting {
                lines: Vec::with_capacity(16 * 1024),
                idle: false,
            }),
            wake: Condvar::new(),
            out: Mutex::new(()),
            direct: AtomicBool::new(false),
        });
        let background = Arc::clone(&sink);
        let started = std::thread::Builder::new()
            .name("logs".into())
            .spawn(move || background.serve());
        if started.is_err() {
            sink.direct.store(true, Ordering::Relaxed);
        }
        sink
    })
}

impl Sink {
    fn write(&self, line: &[u8]) {
        if self.direct.load(Ordering::Relaxed) {
            self.write_out(Some(line));
            return;
        }
        let mut waiting = lock(&self.waiting);
        if waiting.lines.len() + line.len() > BACKLOG {
            drop(waiting);
            self.write_out(Some(line));
            return;
        }
        waiting.lines.extend_from_slice(line);
        let wake = std::mem::replace(&mut waiting.idle, false);
        drop(waiting);
        if wake {
            self.wake.notify_one();
        }
    }

    /// Writes what waits, then `line`, to stderr.
    fn write_out(&self, line: Option<&[u8]>) {
        let _out = lock(&self.out);
        let chunk = std::mem::take(&mut lock(&self.waiting).lines);
        let mut stderr = std::io::stderr().lock();
        // Nowhere to report a failed write of the logs; the lines are dropped.
        let _ = stderr.write_all(&chunk);
        if let Some(line) = line {
            let _ = stderr.write_all(line);
        }
    }

    /// Waits for a line, lets more gather for [`LINGER`], writes them all; again. Under load
    /// that is one wake-up and one `write(2)` per period, whatever the rate of lines.
    fn serve(&self) {
        loop {
            {
                let mut waiting = lock(&self.waiting);
                while waiting.lines.is_empty() {
                    waiting.idle = true;
                    waiting = self
                        .wake
                        .wait(waiting)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
            }
            std::thread::sleep(LINGER);
            self.write_out(None);
        }
    }
}

/// Writes every waiting log line to stderr now (before an exit that skips destructors).
pub fn flush() {
    sink().write_out(None);
}

/// As [`flush`], and from now on every line is written by its caller: the process is ending.
pub(crate) fn flush_for_exit() {
    let sink = sink();
    sink.direct.store(true, Ordering::Relaxed);
    sink.write_out(None);
}

/// Flushes the logs before the panic message, so the lines that led to it come first.
pub(crate) fn flush_on_panic() {
    static HOOKED: std::sync::Once = std::sync::Once::new();
    HOOKED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            flush();
            previous(info);
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(value: &str) -> String {
        let mut line = String::new();
        string(&mut line, value);
        line
    }

    #[test]
    fn strings_are_valid_json() {
        for value in [
            "plain",
            "quote \" and \\ slash",
            "tab\tnew\nline\r",
            "\u{1}\u{1f}",
            "ünï €",
        ] {
            let line = escaped(value);
            let back: String = serde_json::from_str(&line).unwrap();
            assert_eq!(back, value, "{line}");
        }
    }

    #[test]
    fn an_event_is_one_json_object() {
        use tracing_subscriber::prelude::*;
        let captured = Arc::new(Mutex::new(Vec::<String>::new()));
        struct Capture(Arc<Mutex<Vec<String>>>);
        impl<S: Subscriber> Layer<S> for Capture {
            fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
                let mut line = String::new();
                JsonLogs { traced: false }.format(&mut line, event).unwrap();
                self.0.lock().unwrap().push(line);
            }
        }
        let subscriber = tracing_subscriber::registry().with(Capture(Arc::clone(&captured)));
        let _one = crate::telemetry::one_subscriber_at_a_time();
        tracing::subscriber::with_default(subscriber, || {
            let reason = "card \"declined\"";
            tracing::info!(payment_id = "p-1", amount_minor = 1250_i64, ok = false, ratio = f64::NAN, %reason, "payment declined");
        });
        let lines = captured.lock().unwrap();
        let line: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "payment declined");
        assert_eq!(line["payment_id"], "p-1");
        assert_eq!(line["amount_minor"], 1250);
        assert_eq!(line["ok"], false);
        assert!(line["ratio"].is_null());
        assert_eq!(line["reason"], "card \"declined\"");
        assert_eq!(line["target"], module_path!());
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn events_only_creates_no_span() {
        use tracing_subscriber::prelude::*;
        let subscriber = tracing_subscriber::registry()
            .with(JsonLogs { traced: false }.with_filter(EventsOnly("info".parse().unwrap())));
        let _one = crate::telemetry::one_subscriber_at_a_time();
        tracing::subscriber::with_default(subscriber, || {
            assert!(tracing::info_span!("not wanted").is_disabled());
            assert!(tracing::enabled!(tracing::Level::INFO));
            assert!(!tracing::enabled!(tracing::Level::DEBUG));
        });
    }
}
