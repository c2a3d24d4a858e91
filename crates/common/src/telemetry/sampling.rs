//! An unsampled trace costs next to nothing.
//!
//! `tracing-opentelemetry` builds every span it is given, sampled or not: attributes, events,
//! the SDK span. So a saga decides once, at its root span, and when the sampler says no, runs
//! inside [`unsampled`]: no span or event under it reaches the OpenTelemetry layer
//! ([`SampledOnly`]), and with `info` logs (events only) no span is created at all. The trace
//! context still travels, with the sampled flag off, so that the services skip their spans the
//! same way ([`sampled`] tells them) instead of starting traces of their own.
use std::future::Future;

use opentelemetry::Context;
use opentelemetry::trace::TraceContextExt;
use tracing::subscriber::Interest;
use tracing::{Level, Metadata};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context as LayerContext, Filter};

tokio::task_local! {
    /// The context of the unsampled trace the current task works for.
    static UNSAMPLED: Context;
}

/// Runs `work` for the unsampled trace of `context`: its spans are not traced, and its calls
/// carry `context` (sampled flag off) to the services.
pub async fn unsampled<F: Future>(context: Context, work: F) -> F::Output {
    UNSAMPLED.scope(context, work).await
}

/// Whether `context` belongs to a trace that is exported: `false` only for a valid context
/// whose sampled flag is off (no context at all leaves the decision to the sampler).
pub fn sampled(context: &Context) -> bool {
    let span = context.span();
    let span_context = span.span_context();
    !span_context.is_valid() || span_context.is_sampled()
}

/// The context calls should carry inside [`unsampled`].
pub(crate) fn unsampled_context() -> Option<Context> {
    UNSAMPLED.try_with(Context::clone).ok()
}

/// The OpenTelemetry layer's filter: spans and events at INFO and above, outside [`unsampled`].
pub(crate) struct SampledOnly;

impl<S> Filter<S> for SampledOnly {
    fn enabled(&self, meta: &Metadata<'_>, _: &LayerContext<'_, S>) -> bool {
        *meta.level() <= Level::INFO && UNSAMPLED.try_with(|_| ()).is_err()
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if *meta.level() <= Level::INFO {
            Interest::sometimes() // depends on the task: ask each time
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::INFO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    fn context(flags: TraceFlags) -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(7),
            SpanId::from(9),
            flags,
            true,
            TraceState::default(),
        ))
    }

    #[test]
    fn only_a_valid_context_with_the_flag_off_is_unsampled() {
        assert!(sampled(&Context::new()));
        assert!(sampled(&context(TraceFlags::SAMPLED)));
        assert!(!sampled(&context(TraceFlags::default())));
    }

    #[tokio::test]
    async fn nothing_is_traced_inside_unsampled() {
        use tracing_subscriber::prelude::*;
        #[derive(Default, Clone)]
        struct Seen(std::sync::Arc<std::sync::Mutex<Vec<String>>>);
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Seen {
            fn on_new_span(
                &self,
                attrs: &tracing::span::Attributes<'_>,
                _: &tracing::span::Id,
                _: LayerContext<'_, S>,
            ) {
                self.0
                    .lock()
                    .unwrap()
                    .push(attrs.metadata().name().to_owned());
            }
        }
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry().with(seen.clone().with_filter(SampledOnly));
        let _default = tracing::subscriber::set_default(subscriber);
        let _traced = tracing::info_span!("traced");
        let off = context(TraceFlags::default());
        let carried = unsampled(off.clone(), async {
            let _skipped = tracing::info_span!("skipped");
            unsampled_context()
        })
        .await;
        let _debug = tracing::debug_span!("below INFO");
        assert_eq!(*seen.0.lock().unwrap(), ["traced"]);
        assert_eq!(
            carried.map(|c| c.span().span_context().trace_id()),
            Some(TraceId::from(7))
        );
        assert!(unsampled_context().is_none());
    }
}
