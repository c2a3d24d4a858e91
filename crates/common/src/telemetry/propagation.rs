//! W3C trace context on every call: `traceparent` and `tracestate` are written and read here,
//! `baggage` by the SDK's propagator.
//!
//! Every traced call carries a `traceparent` no other call has. Written by the SDK's
//! `TraceContextPropagator` (through `format!`, with an empty `tracestate` beside it on every
//! call), it also went into the HPACK table of both ends of the connection, evicting the headers
//! that do repeat (`:path`, `content-type`, `grpc-timeout`, …), which were then sent and decoded
//! as literals again: in a profile of the orchestrator with every saga unsampled, HPACK's table
//! lookups (and the `memcmp` under them) were 3.8% of its samples, 1.0% with traces off. So
//! `traceparent` is sent never indexed (RFC 7541 §6.2.3: a value that would only churn the
//! table), written into a fixed buffer, and an empty `tracestate` is not sent. Reading is as
//! strict as the W3C format: a version-00 header is exactly 55 characters of lowercase hex and
//! dashes; the SDK accepted some malformed ones.
use std::str::FromStr;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, baggage::BaggageExt};
use opentelemetry_sdk::propagation::BaggagePropagator;

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const BAGGAGE: HeaderName = HeaderName::from_static("baggage");

/// `00-` + 32 + `-` + 16 + `-` + 2.
const TRACEPARENT_LEN: usize = 55;

/// Writes `context` into HTTP/2 request headers (`traceparent`, `tracestate`, `baggage`).
pub fn inject(context: &Context, headers: &mut HeaderMap) {
    let span = context.span();
    let span_context = span.span_context();
    if span_context.is_valid() {
        headers.insert(TRACEPARENT, traceparent(span_context));
        let state = span_context.trace_state().header();
        if !state.is_empty()
            && let Ok(state) = HeaderValue::try_from(state)
        {
            headers.insert(TRACESTATE, state);
        }
    }
    if !context.baggage().is_empty() {
        BaggagePropagator::new().inject_context(context, &mut HeaderInjector(headers));
    }
}

/// Reads a trace context (and baggage) from HTTP/2 request headers. A missing or malformed
/// `traceparent` leaves the current context as it is, as a propagator does.
pub fn extract(headers: &HeaderMap) -> Context {
    let current = Context::current();
    let context = match headers
        .get(TRACEPARENT)
        .and_then(|value| parse_traceparent(value.as_bytes(), headers.get(TRACESTATE)))
    {
        Some(remote) => current.with_remote_span_context(remote),
        None => current,
    };
    if headers.contains_key(BAGGAGE) {
        BaggagePropagator::new().extract_with_context(&context, &HeaderExtractor(headers))
    } else {
        context
    }
}

/// The `traceparent` of `span` (version 00), never indexed.
fn traceparent(span: &SpanContext) -> HeaderValue {
    let mut text = [b'-'; TRACEPARENT_LEN];
    text[..2].copy_from_slice(b"00");
    write_hex(&span.trace_id().to_bytes(), &mut text[3..35]);
    write_hex(&span.span_id().to_bytes(), &mut text[36..52]);
    write_hex(
        &[(span.trace_flags() & TraceFlags::SAMPLED).to_u8()],
        &mut text[53..],
    );
    let mut value = HeaderValue::from_bytes(&text)
        .unwrap_or_else(|_| unreachable!("hex digits and dashes make a valid header value"));
    value.set_sensitive(true);
    value
}

fn write_hex(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
}

/// `version-traceid-spanid-flags`: a later version may append fields after another dash, version
/// `ff` is invalid, and so are all-zero ids. Only the sampled flag is kept.
fn parse_traceparent(value: &[u8], state: Option<&HeaderValue>) -> Option<SpanContext> {
    let value = value.trim_ascii();
    if value.len() < TRACEPARENT_LEN {
        return None;
    }
    let (fields, rest) = value.split_at(TRACEPARENT_LEN);
    let version = read_hex::<1>(&fields[..2])?[0];
    let rest_ok = match version {
        0xff => false,
        0 => rest.is_empty(),
        _ => rest.first().is_none_or(|&c| c == b'-'),
    };
    if !rest_ok || fields[2] != b'-' || fields[35] != b'-' || fields[52] != b'-' {
        return None;
    }
    let trace_id = TraceId::from_bytes(read_hex(&fields[3..35])?);
    let span_id = SpanId::from_bytes(read_hex(&fields[36..52])?);
    let flags = TraceFlags::new(read_hex::<1>(&fields[53..])?[0]) & TraceFlags::SAMPLED;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    // A tracestate that does not parse is dropped, the traceparent kept (W3C §3.3.1.1).
    let state = state
        .and_then(|state| state.to_str().ok())
        .and_then(|state| TraceState::from_str(state).ok())
        .unwrap_or_default();
    Some(SpanContext::new(trace_id, span_id, flags, true, state))
}

/// `2 * N` lowercase hex digits (the format allows no other) as `N` bytes.
fn read_hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if text.len() != 2 * N {
        return None;
    }
    let mut bytes = [0; N];
    for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(bytes)
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::KeyValue;
    use opentelemetry::baggage::Baggage;
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_str(k).unwrap(), v.parse().unwrap()))
            .collect()
    }

    fn read(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
        let mut pairs = vec![("traceparent", traceparent)];
        pairs.extend(tracestate.map(|s| ("tracestate", s)));
        let context = extract(&headers(&pairs));
        let span = context.span();
        let span = span.span_context();
        span.is_valid().then(|| span.clone())
    }

    /// What the SDK's propagator reads from the same headers.
    fn sdk_read(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
        let mut pairs = vec![("traceparent", traceparent)];
        pairs.extend(tracestate.map(|s| ("tracestate", s)));
        let context = TraceContextPropagator::new().extract(&HeaderExtractor(&headers(&pairs)));
        let span = context.span();
        let span = span.span_context();
        span.is_valid().then(|| span.clone())
    }

    const ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7";

    #[test]
    fn reads_what_the_sdk_reads_from_well_formed_headers() {
        let cases = [
            (format!("00-{ID}-00"), Some("foo=bar")),
            (format!("00-{ID}-01"), Some("foo=bar,congo=t61rcWkgMzE")),
            (format!("00-{ID}-03"), None),
            (format!("00-{ID}-09"), Some("not a tracestate")),
            (format!("02-{ID}-09"), Some("foo=bar")),
            (format!("02-{ID}-08"), None),
            (format!("02-{ID}-09-XYZxsf09"), None),
            (format!("01-{ID}-09-"), None),
            (format!(" 00-{ID}-01 "), None),
        ];
        for (traceparent, state) in &cases {
            let ours = read(traceparent, *state);
            assert!(ours.is_some(), "{traceparent} refused");
            assert_eq!(ours, sdk_read(traceparent, *state), "{traceparent}");
        }
        let read = read(&format!("00-{ID}-01"), Some("foo=bar")).unwrap();
        assert_eq!(
            read.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(read.span_id().to_string(), "00f067aa0ba902b7");
        assert!(read.is_sampled() && read.is_remote());
        assert_eq!(read.trace_state().get("foo"), Some("bar"));
    }

    #[test]
    fn refuses_what_the_format_refuses() {
        let refused = [
            "0000-00000000000000000000000000000000-0000000000000000-01",
            "00-ab00000000000000000000000000000000-cd00000000000000-01",
            "00-ab000000000000000000000000000000-cd0000000000000000-01",
            "00-ab000000000000000000000000000000-cd00000000000000-0100",
            "qw-00000000000000000000000000000000-0000000000000000-01",
            "00-qw000000000000000000000000000000-cd00000000000000-01",
            "00-ab000000000000000000000000000000-qw00000000000000-01",
            "00-ab000000000000000000000000000000-cd00000000000000-qw",
            "A0-00000000000000000000000000000000-0000000000000000-01",
            "00-AB000000000000000000000000000000-cd00000000000000-01",
            "00-ab000000000000000000000000000000-CD00000000000000-01",
            "00-ab000000000000000000000000000000-cd00000000000000-A1",
            "00-00000000000000000000000000000000-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "02-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "",
        ];
        for traceparent in refused {
            assert_eq!(read(traceparent, None), None, "{traceparent:?} read");
            assert_eq!(
                sdk_read(traceparent, None),
                None,
                "the SDK read {traceparent:?}"
            );
        }
        // Malformed ones the SDK accepted: version 00 with more after it, ids of the wrong
        // length, a sign before the hex.
        for traceparent in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(read(traceparent, None), None, "{traceparent:?} read");
            assert!(sdk_read(traceparent, None).is_some(), "{traceparent:?}");
        }
    }

    #[test]
    fn writes_what_the_sdk_writes_never_indexed_and_round_trips() {
        for (flags, state) in [
            (TraceFlags::SAMPLED, "foo=bar"),
            (TraceFlags::default(), ""),
            (TraceFlags::new(0xff), "a=1,b=2"),
        ] {
            let span = SpanContext::new(
                TraceId::from(0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c),
                SpanId::from(0x00f0_67aa_0ba9_02b7),
                flags,
                true,
                TraceState::from_str(state).unwrap(),
            );
            let context = Context::new().with_remote_span_context(span.clone());
            let mut ours = HeaderMap::new();
            inject(&context, &mut ours);
            let mut sdk = HeaderMap::new();
            TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(&mut sdk));
            assert_eq!(ours.get("traceparent"), sdk.get("traceparent"));
            assert!(ours.get("traceparent").unwrap().is_sensitive());
            // The SDK also sends an empty tracestate; an empty one is not sent here.
            assert_eq!(
                ours.get("tracestate").map(|s| s.to_str().unwrap()),
                Some(state).filter(|s| !s.is_empty())
            );
            let back = extract(&ours);
            let back = back.span();
            let expected = SpanContext::new(
                span.trace_id(),
                span.span_id(),
                flags & TraceFlags::SAMPLED,
                true,
                span.trace_state().clone(),
            );
            assert_eq!(back.span_context(), &expected);
        }
        // No valid span: nothing is written.
        let mut none = HeaderMap::new();
        inject(&Context::new(), &mut none);
        assert!(none.is_empty());
    }

    #[test]
    fn baggage_goes_along() {
        let baggage = Baggage::from_iter([KeyValue::new("tenant", "acme")]);
        let context = Context::new().with_baggage(baggage);
        let mut sent = HeaderMap::new();
        inject(&context, &mut sent);
        assert_eq!(sent.get("baggage").unwrap(), "tenant=acme");
        let back = extract(&sent);
        assert_eq!(
            back.baggage().get("tenant").map(|v| v.as_str()),
            Some("acme")
        );
        assert!(!back.span().span_context().is_valid());
    }
}
