//! The diagnostic log on stderr: text for people, or (`[log] format =
//! "json"`) one JSON object per line for Loki, Fluent Bit or Cloud Logging.
//! The audit stream is separate and unaffected.
//!
//! A JSON line has `timestamp`, `level`, `target`, `message`, the event's own
//! fields, the fields of the spans it happened in, flattened, and, inside a
//! request, `request_id` and `trace_id`. A text line inside a request ends
//! with `request_id=… trace_id=…`.

use std::fmt;
use std::io::IsTerminal;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber: `RUST_LOG` (default `info`), on stderr.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .event_format(TextLine(tracing_subscriber::fmt::format::Format::default()))
            .init(),
        LogFormat::Json => builder
            .with_ansi(false)
            .fmt_fields(JsonFields::new())
            .event_format(JsonLine)
            .init(),
    }
}

/// Formats one event as one JSON object.
pub(crate) struct JsonLine;

impl<S> FormatEvent<S, JsonFields> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = Map::new();
        let mut ts = [0u8; crate::audit::timestamp::LEN];
        let now = crate::audit::timestamp::rfc3339_millis(std::time::SystemTime::now(), &mut ts);
        line.insert("timestamp".into(), now.into());
        line.insert("level".into(), event.metadata().level().as_str().into());
        line.insert("target".into(), event.metadata().target().into());
        // Span fields (outermost first), as JsonFields stored them.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<JsonFields>>() else {
                    continue;
                };
                if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(fields) {
                    line.extend(fields);
                }
            }
        }
        crate::trace_context::with_current(|request_id, trace_id| {
            line.insert("request_id".into(), request_id.into());
            line.insert("trace_id".into(), trace_id.into());
        });
        event.record(&mut Fields(&mut line));
        let text = serde_json::to_string(&Value::Object(line)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// The usual text line; inside a request, with its ids at the end.
pub(crate) struct TextLine(tracing_subscriber::fmt::format::Format);

impl<S, N> FormatEvent<S, N> for TextLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let ids = crate::trace_context::with_current(|r, t| format!(" request_id={r} trace_id={t}"));
        let Some(ids) = ids else {
            return self.0.format_event(ctx, writer, event);
        };
        // Rare (a request that logs): formatted aside, without colours.
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let line = line.trim_end_matches('\n');
        writeln!(writer, "{line}{ids}")
    }
}

/// Collects an event's fields into the line.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_is_one_object_with_span_fields_flattened() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .fmt_fields(JsonFields::new())
            .event_format(JsonLine)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("phase", step = "forward");
            let _entered = span.enter();
            tracing::warn!(kind = "connect", attempt = 2u64, "upstream request failed");
        });
        tracing::subscriber::with_default(
            tracing_subscriber::fmt()
                .with_writer({
                    let writer = buffer.clone();
                    move || writer.clone()
                })
                .fmt_fields(JsonFields::new())
                .event_format(JsonLine)
                .finish(),
            || tracing::info!("outside any request"),
        );
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        let first = &lines[0];
        assert_eq!(first["level"], "WARN");
        assert_eq!(first["message"], "upstream request failed");
        assert_eq!(first["kind"], "connect");
        assert_eq!(first["attempt"], 2);
        assert_eq!(first["step"], "forward");
        assert_eq!(first["target"], module_path!());
        assert!(first["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(lines[1].get("request_id").is_none());
    }

    #[test]
    fn lines_inside_a_request_carry_its_ids_in_both_formats() {
        use crate::trace_context::{sync_in, RequestLog, TraceContext};
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let request = || RequestLog::new(None, TraceContext::from_headers(&headers));
        let text = Buffer::default();
        let writer = text.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .event_format(TextLine(tracing_subscriber::fmt::format::Format::default()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            sync_in(request(), || tracing::warn!("inside"));
            tracing::info!("outside");
        });
        let text = String::from_utf8(text.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("inside") && lines[0].ends_with(" request_id= trace_id=4bf92f3577b34da6a3ce929d0e0e4736"),
            "{text}"
        );
        assert!(lines[1].contains("outside") && !lines[1].contains("trace_id"), "{text}");

        let json = Buffer::default();
        let writer = json.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .fmt_fields(JsonFields::new())
            .event_format(JsonLine)
            .finish();
        tracing::subscriber::with_default(subscriber, || sync_in(request(), || tracing::warn!("inside")));
        let line: Value =
            serde_json::from_str(String::from_utf8(json.0.lock().unwrap().clone()).unwrap().trim()).unwrap();
        assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(line["request_id"], "");
    }
}
