//! An unsampled trace costs next to nothing.
//!
//! `tracing-opentelemetry` builds every span it is given, sampled or not: attributes, events,
//! the SDK span. So a saga decides once, before its root span, and when the sampler says no, runs
//! inside [`unsampled`]: no span or event under it reaches the OpenTelemetry layer
//! ([`SampledOnly`]), and with `info` logs (events only) no span is created at all. The trace
//! context still travels, with the sampled flag off, so that the services skip their spans the
//! same way ([`sampled`] tells them) instead of starting traces of their own.
//!
//! Even the root span is not built for an unsampled saga: [`root`] asks the tracer provider's
//! own sampler first, with a trace id drawn for the purpose, and when it says yes, pins that id
//! for the root span built next on this thread ([`PinnedIds`]), so that the provider, asking the
//! same sampler about the same id, comes to the same answer.
use std::cell::Cell;
use std::future::Future;
use std::sync::OnceLock;

use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SamplingDecision, ShouldSample};
use tracing::subscriber::Interest;
use tracing::{Level, Metadata};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context as LayerContext, Filter};

tokio::task_local! {
    /// The context of the unsampled trace the current task works for.
    static UNSAMPLED: Context;
}

/// The tracer provider's sampler, once traces are exported.
static SAMPLER: OnceLock<Box<dyn ShouldSample>> = OnceLock::new();

thread_local! {
    /// The trace id [`root`] chose for the root span about to be built on this thread.
    static PINNED: Cell<Option<TraceId>> = const { Cell::new(None) };
}

/// The tracer provider's id generator: random ids, but a root span gets the trace id [`root`]
/// decided on.
#[derive(Debug, Default)]
pub(crate) struct PinnedIds(RandomIdGenerator);

impl IdGenerator for PinnedIds {
    fn new_trace_id(&self) -> TraceId {
        PINNED.take().unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        self.0.new_span_id()
    }
}

/// Keeps the sampler the tracer provider was given, for [`root`].
pub(crate) fn keep_sampler(sampler: Box<dyn ShouldSample>) {
    let _ = SAMPLER.set(sampler);
}

/// How a trace (a saga) begins.
#[derive(Debug)]
pub enum Root {
    /// Build the root span now, on this thread: it is exported (or nothing is, with traces off).
    Traced,
    /// Build no span: run the work inside [`unsampled`] with this context.
    Unsampled(Context),
}

/// Decides, before any span of it exists, whether the trace of a root span `name` (under
/// `parent`, a context handed down from outside, if any) is exported. On [`Root::Traced`] the
/// caller builds its root span at once, on this thread.
pub fn root(parent: Option<&Context>, name: &str) -> Root {
    let Some(sampler) = SAMPLER.get() else {
        return Root::Traced;
    };
    let inherited = parent
        .map(|parent| parent.span().span_context().clone())
        .filter(SpanContext::is_valid);
    let ids = RandomIdGenerator::default();
    let trace_id = inherited
        .as_ref()
        .map_or_else(|| ids.new_trace_id(), SpanContext::trace_id);
    let result = sampler.should_sample(parent, trace_id, name, &SpanKind::Internal, &[], &[]);
    if result.decision == SamplingDecision::Drop {
        let span = SpanContext::new(
            trace_id,
            ids.new_span_id(),
            TraceFlags::default(),
            false,
            result.trace_state,
        );
        let base = parent.cloned().unwrap_or_default();
        return Root::Unsampled(base.with_remote_span_context(span));
    }
    if inherited.is_none() {
        PINNED.set(Some(trace_id));
    }
    Root::Traced
}

/// Starts the root span built after [`Root::Traced`]: it takes the trace id [`root`] chose.
pub fn start_root(span: &tracing::Span) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    // Asking for its context is what starts the OpenTelemetry span.
    let _ = span.context();
    // Nothing else may take the id: a span built without the OpenTelemetry layer never asks.
    PINNED.set(None);
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

/// Whether the current task works inside [`unsampled`].
fn in_unsampled() -> bool {
    UNSAMPLED.try_with(|_| ()).is_ok()
}

/// The OpenTelemetry layer's filter: spans and events at INFO and above, outside [`unsampled`].
pub(crate) struct SampledOnly;

impl<S> Filter<S> for SampledOnly {
    fn enabled(&self, meta: &Metadata<'_>, _: &LayerContext<'_, S>) -> bool {
        *meta.level() <= Level::INFO && !in_unsampled()
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

/// With JSON logs only the OpenTelemetry layer wants spans, and not inside [`unsampled`]; this
/// global filter says so for the whole stack. [`SampledOnly`] alone cannot: when a per-layer
/// filter answers "sometimes" for a callsite and then every per-layer filter says no,
/// tracing-subscriber still builds the span (its registry only skips it per layer), and an
/// unsampled saga paid for registering, entering and closing every step span.
pub(crate) struct UnsampledSpansOff;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for UnsampledSpansOff {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if meta.is_span() && *meta.level() > Level::INFO {
            Interest::never() // no layer takes spans below INFO
        } else {
            Interest::sometimes()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>, _: LayerContext<'_, S>) -> bool {
        !meta.is_span() || !in_unsampled()
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        // Never more than the other layers ask for (the stack takes the most verbose).
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

    /// The only test that sets the sampler (it is set once per process).
    #[test]
    fn a_root_is_decided_as_the_provider_would_decide_it() {
        use opentelemetry_sdk::trace::Sampler;
        let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.5)));
        keep_sampler(Box::new(sampler.clone()));
        let decide = |trace_id: TraceId, parent: Option<&Context>| {
            sampler
                .should_sample(parent, trace_id, "saga", &SpanKind::Internal, &[], &[])
                .decision
        };
        let ids = PinnedIds::default();
        let (mut traced, mut unsampled) = (0, 0);
        for _ in 0..200 {
            match root(None, "saga") {
                // The provider's next trace id is the one decided on, and it samples it too.
                Root::Traced => {
                    traced += 1;
                    let trace_id = ids.new_trace_id();
                    assert_eq!(decide(trace_id, None), SamplingDecision::RecordAndSample);
                    assert_ne!(ids.new_trace_id(), trace_id, "pinned for one span only");
                }
                Root::Unsampled(context) => {
                    unsampled += 1;
                    let span = context.span().span_context().clone();
                    assert!(span.is_valid() && !span.is_sampled());
                    assert_eq!(decide(span.trace_id(), None), SamplingDecision::Drop);
                }
            }
        }
        assert!(
            traced > 50 && unsampled > 50,
            "{traced} traced, {unsampled} not"
        );
        // A parent handed down decides, and its trace id is kept; nothing is pinned.
        assert!(matches!(
            root(Some(&context(TraceFlags::SAMPLED)), "saga"),
            Root::Traced
        ));
        assert_ne!(ids.new_trace_id(), TraceId::from(7));
        match root(Some(&context(TraceFlags::default())), "saga") {
            Root::Unsampled(context) => {
                assert_eq!(context.span().span_context().trace_id(), TraceId::from(7));
            }
            Root::Traced => panic!("an unsampled parent's child was traced"),
        }
    }

    #[test]
    fn only_a_valid_context_with_the_flag_off_is_unsampled() {
        assert!(sampled(&Context::new()));
        assert!(sampled(&context(TraceFlags::SAMPLED)));
        assert!(!sampled(&context(TraceFlags::default())));
    }

    #[tokio::test]
    #[expect(clippy::await_holding_lock, reason = "it orders tests, not tasks")]
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
        let _one = crate::telemetry::one_subscriber_at_a_time();
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
