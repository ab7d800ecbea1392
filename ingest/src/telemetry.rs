//! Tracing set-up, once per process: `RUST_LOG` filters (default `info`), the format comes from
//! the configuration.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// Shows a value that came from a request (a path segment, a parser's message echoing the body)
/// with control characters and quotes escaped, so that in the pretty format it can never end a
/// log line and start a forged one. The JSON format escapes on its own; this is harmless there.
#[derive(Debug, Clone, Copy)]
pub struct Untrusted<T>(pub T);

impl<T: std::fmt::Display> std::fmt::Display for Untrusted<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        for c in self.0.to_string().chars() {
            if c.is_control() || c == '"' || c == '\\' {
                for escaped in c.escape_debug() {
                    f.write_char(escaped)?;
                }
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_crafted_value_cannot_forge_a_line_in_the_pretty_format() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let crafted = "shop\n2026-01-01T00:00:00Z  INFO push: forged line\r\u{1b}[2J";
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(app = %Untrusted(crafted), "URL verification refused");
        });
        let printed = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(printed.lines().count(), 1, "{printed}");
        assert!(printed.contains(r"shop\n2026"), "{printed}");
        assert!(!printed.contains('\u{1b}'));
    }

    #[test]
    fn ordinary_values_print_as_they_are() {
        assert_eq!(Untrusted("shop-1_中文").to_string(), "shop-1_中文");
        assert_eq!(Untrusted("a\"b").to_string(), r#"a\"b"#);
    }
}
