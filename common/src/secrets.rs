//! The secret values an app is configured with: the push [`Token`] and the [`AppSecret`].
//!
//! Both are parsed once, when the configuration is loaded (an empty one is refused there), and
//! kept in [`SecretString`]s: their `Debug` prints `<redacted>`, they have no `Display`, and the
//! only way to the text is an explicit [`Token::expose`] / [`AppSecret::expose`] at the one place
//! that needs it (a signature check, a token fetch). The EncodingAESKey has its own type,
//! [`crate::crypto::AesKey`], decoded from its 43 characters at load time as well.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

/// A secret that was empty where a value is required; names which kind, never a value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the {0} is empty")]
pub struct EmptySecret(pub &'static str);

macro_rules! secret_text {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Clone)]
        pub struct $name(SecretString);

        impl $name {
            /// Wraps `value` byte for byte; only an empty value is refused.
            pub fn new(value: impl Into<String>) -> Result<$name, EmptySecret> {
                let value: String = value.into();
                if value.is_empty() {
                    return Err(EmptySecret($what));
                }
                Ok($name(SecretString::from(value)))
            }

            /// The secret text, for the one call that needs it.
            pub fn expose(&self) -> &str {
                self.0.expose_secret()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }

        /// Equality for detecting a changed configuration, not for authentication (the
        /// comparison is not constant time).
        impl PartialEq for $name {
            fn eq(&self, other: &$name) -> bool {
                self.expose() == other.expose()
            }
        }
        impl Eq for $name {}
    };
}

secret_text! {
    /// The push Token of the console's message-push settings: the key of every `signature` and
    /// `msg_signature` WeChat sends.
    Token, "token"
}

secret_text! {
    /// An app's AppSecret: what the access-token endpoints take beside the appid.
    AppSecret, "AppSecret"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print_and_empty_ones_are_refused() {
        let token = Token::new("hunter2-token").expect("non-empty");
        let secret = AppSecret::new("hunter2-secret").expect("non-empty");
        let shown = format!("{token:?} {secret:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(token.expose(), "hunter2-token");
        assert_eq!(Token::new(""), Err(EmptySecret("token")));
        assert_eq!(AppSecret::new(""), Err(EmptySecret("AppSecret")));
        assert_eq!(
            Token::new(" padded ").map(|t| t.expose().to_owned()),
            Ok(" padded ".to_owned()),
            "byte for byte"
        );
    }
}
