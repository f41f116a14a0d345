//! Identifiers, validated once at the edge.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Something that failed validation at the edge; the message names the value and the rule.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct InvalidId(pub String);

macro_rules! string_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// GitHub's `X-GitHub-Delivery` GUID. Redeliveries reuse it.
    DeliveryId
);
string_id!(
    /// GitHub's `X-GitHub-Hook-ID` (empty when the header is absent).
    HookId
);
string_id!(
    /// A full 40-character lowercase hex commit SHA.
    CommitSha
);
string_id!(
    /// A CodeBuild build id (`project:uuid`).
    BuildId
);
string_id!(
    /// The name of an `[[app]]` in the configuration.
    AppName
);

fn bounded(what: &str, value: &str, max: usize) -> Result<(), InvalidId> {
    if value.is_empty() {
        return Err(InvalidId(format!("{what} is empty")));
    }
    if value.len() > max {
        return Err(InvalidId(format!("{what} is longer than {max} characters")));
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(InvalidId(format!(
            "{what} contains whitespace or control characters"
        )));
    }
    Ok(())
}

impl DeliveryId {
    pub fn parse(value: &str) -> Result<Self, InvalidId> {
        bounded("X-GitHub-Delivery", value, 128)?;
        Ok(Self(value.to_owned()))
    }
    /// A fresh id for runs that did not come from GitHub (operator replays).
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }
}

impl HookId {
    pub fn parse(value: Option<&str>) -> Result<Self, InvalidId> {
        match value {
            None | Some("") => Ok(Self(String::new())),
            Some(v) => {
                bounded("X-GitHub-Hook-ID", v, 64)?;
                Ok(Self(v.to_owned()))
            }
        }
    }
}

impl CommitSha {
    pub const ZERO: &'static str = "0000000000000000000000000000000000000000";

    pub fn parse(value: &str) -> Result<Self, InvalidId> {
        if value.len() == 40 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(value.to_ascii_lowercase()))
        } else {
            Err(InvalidId(format!(
                "\"{}\" is not a 40-character hex commit SHA",
                value.chars().take(64).collect::<String>()
            )))
        }
    }

    pub fn is_zero(&self) -> bool {
        self.0 == Self::ZERO
    }

    /// The 7-character abbreviation git and GitHub show.
    pub fn short(&self) -> &str {
        &self.0[..7]
    }
}

impl BuildId {
    /// Accepts `project:uuid` or a build ARN (`arn:aws:codebuild:…:build/project:uuid`).
    pub fn parse(value: &str) -> Result<Self, InvalidId> {
        let id = value.rsplit_once(":build/").map_or(value, |(_, id)| id);
        if id.contains(':') && !id.starts_with(':') && !id.ends_with(':') {
            Ok(Self(id.to_owned()))
        } else {
            Err(InvalidId(format!(
                "\"{value}\" is not a CodeBuild build id"
            )))
        }
    }

    pub fn project(&self) -> &str {
        self.0.split_once(':').map_or("", |(p, _)| p)
    }
}

impl AppName {
    pub fn parse(value: &str) -> Result<Self, InvalidId> {
        let ok = !value.is_empty()
            && value.len() <= 64
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(InvalidId(format!(
                "app name \"{value}\" must be 1-64 characters of letters, digits, '-', '_' or '.'"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_sha_is_forty_hex_and_lowercased() {
        let sha = CommitSha::parse("1F2E3D4C5B6A79881F2E3D4C5B6A79881F2E3D4C").unwrap();
        assert_eq!(sha.as_str(), "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c");
        assert_eq!(sha.short(), "1f2e3d4");
        assert!(CommitSha::parse("1f2e3d4").is_err());
        assert!(CommitSha::parse("zf2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c").is_err());
        assert!(CommitSha::parse(CommitSha::ZERO).unwrap().is_zero());
    }

    #[test]
    fn build_id_accepts_arn_and_plain_id() {
        let arn = "arn:aws:codebuild:eu-west-1:123456789012:build/web-build:5f2c-11";
        assert_eq!(BuildId::parse(arn).unwrap().as_str(), "web-build:5f2c-11");
        assert_eq!(
            BuildId::parse("web-build:abc").unwrap().project(),
            "web-build"
        );
        assert!(BuildId::parse("nonsense").is_err());
    }

    #[test]
    fn delivery_and_hook_ids_are_bounded() {
        assert!(DeliveryId::parse("").is_err());
        assert!(DeliveryId::parse("a b").is_err());
        assert!(DeliveryId::parse(&"x".repeat(129)).is_err());
        assert_eq!(HookId::parse(None).unwrap().as_str(), "");
        assert!(AppName::parse("web").is_ok());
        assert!(AppName::parse("we b").is_err());
    }
}
