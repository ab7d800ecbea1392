//! The extra librdkafka properties both services accept: their names, the properties file, and
//! which values never print.
//!
//! A secured Kafka needs librdkafka settings (`security.protocol`, `sasl.*`, `ssl.*`) that the
//! services pass through untouched. They come from a mounted file (`name=value` a line, `#`
//! comments) and from the services' configuration, where environment variables write `_` for `.`
//! because `__` already separates their levels. Both services read the same file of a deployment,
//! so the format is parsed here, once; reading the file is each service's own business.
//!
//! Pure text functions: no I/O, no librdkafka.

use std::collections::BTreeMap;

/// A line of a properties file that is neither blank, a comment, nor `name=value`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: expected name=value")]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
}

/// librdkafka's name for `name`: it names its properties with dots and never with underscores,
/// and an environment variable cannot carry a dot, so `security_protocol` is `security.protocol`.
pub fn dotted(name: &str) -> String {
    name.trim().replace('_', ".")
}

/// The properties of a file's text, in librdkafka's dotted names. Values are trimmed and may
/// contain `=` (only the first one separates).
pub fn parse(text: &str) -> Result<BTreeMap<String, String>, LineError> {
    let mut properties = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            return Err(LineError { line: number + 1 });
        };
        properties.insert(dotted(name), value.trim().to_owned());
    }
    Ok(properties)
}

/// The file's properties (if any), with `overrides` (from the configuration) over them, every
/// name dotted.
pub fn merge(
    file: Option<BTreeMap<String, String>>,
    overrides: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut merged = file.unwrap_or_default();
    for (name, value) in overrides {
        merged.insert(dotted(name), value.clone());
    }
    merged
}

/// The first of `reserved` that `properties` sets, under its dotted name: a property the service
/// sets itself and relies on, which an alias or a second spelling must not replace (which of two
/// names for one librdkafka property wins is not defined).
pub fn first_reserved<'a>(
    properties: &BTreeMap<String, String>,
    reserved: &[&'a str],
) -> Option<&'a str> {
    let names: Vec<String> = properties.keys().map(|name| dotted(name)).collect();
    reserved
        .iter()
        .find(|r| names.iter().any(|name| name == *r))
        .copied()
}

/// Whether a property's value may be a credential (`sasl.password`, `ssl.key.password`,
/// `sasl.jaas.config`, `sasl.oauthbearer.client.secret`, ...): such values never print.
pub fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "secret", "key", "token", "jaas", "oauthbearer"]
        .iter()
        .any(|word| name.contains(word))
}

/// `properties` for a `Debug` print: names as they are, secret-looking values replaced.
pub fn redacted(properties: &BTreeMap<String, String>) -> BTreeMap<&str, &str> {
    properties
        .iter()
        .map(|(name, value)| {
            let shown = if is_secret(name) {
                "<redacted>"
            } else {
                value.as_str()
            };
            (name.as_str(), shown)
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_file_parses_into_dotted_names_and_reports_the_bad_line() {
        let parsed = parse(
            "# mounted from a Secret\n\n  security_protocol = SASL_SSL\nsasl.password=a=b \n",
        )
        .unwrap();
        assert_eq!(parsed["security.protocol"], "SASL_SSL");
        assert_eq!(parsed["sasl.password"], "a=b");
        assert_eq!(parse("a=1\nno equals\n"), Err(LineError { line: 2 }));
    }

    #[test]
    fn the_configuration_overrides_the_file_under_either_spelling() {
        let file = parse("sasl.mechanism=PLAIN\nsasl.username=x\n").unwrap();
        let overrides = BTreeMap::from([("sasl_mechanism".to_owned(), "SCRAM-SHA-512".to_owned())]);
        let merged = merge(Some(file), &overrides);
        assert_eq!(merged["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(merged["sasl.username"], "x");
        assert_eq!(merged.len(), 2);
    }

    #[test]
    fn reserved_names_are_found_under_either_spelling() {
        let props = BTreeMap::from([("metadata_broker_list".to_owned(), "x".to_owned())]);
        assert_eq!(
            first_reserved(&props, &["group.id", "metadata.broker.list"]),
            Some("metadata.broker.list")
        );
        assert_eq!(first_reserved(&props, &["group.id"]), None);
    }

    #[test]
    fn credentials_never_print() {
        let props = BTreeMap::from([
            ("sasl.password".to_owned(), "hunter2".to_owned()),
            ("SSL.KEY.PASSWORD".to_owned(), "hunter3".to_owned()),
            ("sasl.jaas.config".to_owned(), "hunter4".to_owned()),
            ("security.protocol".to_owned(), "SASL_SSL".to_owned()),
        ]);
        let printed = format!("{:?}", redacted(&props));
        assert!(!printed.contains("hunter"), "{printed}");
        assert!(printed.contains("SASL_SSL") && printed.contains("sasl.password"));
    }
}
