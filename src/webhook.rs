//! The push domain: GitHub's signature, the push parsed at the edge, and the verdict on it.
//!
//! Nothing here knows HTTP: `http::webhook` reads the request, calls [`verify`] and
//! [`decide`], journals and answers.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::config::{AppConfig, Config, WebhookSecrets};
use crate::ids::CommitSha;
use crate::journal::{BuildRequest, Verdict};

/// GitHub's payload cap.
pub const MAX_BODY_BYTES: usize = 25 * 1024 * 1024;

type HmacSha256 = Hmac<Sha256>;

/// `sha256=` + hex HMAC-SHA256 of `body` with `secret`, as GitHub sends it.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("missing X-Hub-Signature-256 header")]
    Missing,
    #[error("malformed X-Hub-Signature-256 header")]
    Malformed,
    #[error("signature does not match")]
    Mismatch,
}

/// Checks `header` (the `X-Hub-Signature-256` value) against every secret, in constant time.
pub fn verify(
    secrets: &WebhookSecrets,
    header: Option<&str>,
    body: &[u8],
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let expected = signature_bytes(header, "sha256=").ok_or(SignatureError::Malformed)?;
    // Check every secret, so the time taken does not tell which one matched.
    let mut matched = false;
    for secret in secrets.iter() {
        let mut mac = HmacSha256::new_from_slice(secret.expose()).expect("any key length");
        mac.update(body);
        matched |= mac.verify_slice(&expected).is_ok();
    }
    if matched {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// The fields of a push slipway uses. Everything else in the payload is ignored.
#[derive(Debug, Deserialize)]
struct PushPayload {
    #[serde(rename = "ref")]
    git_ref: String,
    #[serde(default)]
    before: Option<String>,
    after: String,
    #[serde(default)]
    deleted: bool,
    repository: RepositoryField,
}

#[derive(Debug, Deserialize)]
struct RepositoryField {
    full_name: String,
}

/// A push, parsed at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    pub repository: String,
    pub git_ref: String,
    /// The commit the branch pointed at before (None for a new branch).
    pub before: Option<CommitSha>,
    pub after: CommitSha,
    pub deleted: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("payload is not valid JSON: {0}")]
    Json(String),
    #[error("form body has no payload field")]
    NoPayloadField,
    #[error("payload field {path}: {message}")]
    Field { path: String, message: String },
}

impl Push {
    pub fn parse(json: &[u8]) -> Result<Push, PayloadError> {
        let de = &mut serde_json::Deserializer::from_slice(json);
        let raw: PushPayload = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                PayloadError::Json(inner.to_string())
            } else {
                PayloadError::Field {
                    path,
                    message: inner.to_string(),
                }
            }
        })?;
        let after = CommitSha::parse(&raw.after).map_err(|e| PayloadError::Field {
            path: "after".into(),
            message: e.0,
        })?;
        let before = raw
            .before
            .as_deref()
            .and_then(|b| CommitSha::parse(b).ok())
            .filter(|b| !b.is_zero());
        Ok(Push {
            repository: raw.repository.full_name,
            git_ref: raw.git_ref,
            before,
            after,
            deleted: raw.deleted,
        })
    }

    /// Which apps this push builds, or why none.
    pub fn verdict(&self, config: &Config) -> Verdict {
        if self.deleted || self.after.is_zero() {
            return Verdict::Ignored(format!("{} was deleted", self.git_ref));
        }
        if let Some(tag) = self.git_ref.strip_prefix("refs/tags/") {
            return Verdict::Ignored(format!("tag push ({tag}) is not deployed"));
        }
        let by_repo: Vec<&AppConfig> = config
            .apps
            .iter()
            .filter(|a| a.repository.eq_ignore_ascii_case(&self.repository))
            .collect();
        if by_repo.is_empty() {
            return Verdict::Ignored(format!(
                "no app is configured for repository {}",
                self.repository
            ));
        }
        let matched: Vec<BuildRequest> = by_repo
            .iter()
            .filter(|a| a.git_ref() == self.git_ref)
            .map(|a| BuildRequest {
                app: a.name.clone(),
                sha: self.after.clone(),
                project: a.codebuild_project.clone(),
                image_tag: a.tag_for(&self.after),
                service_key: a.service_key(),
                before: self.before.as_ref().map(|b| b.to_string()),
            })
            .collect();
        if matched.is_empty() {
            let branches: Vec<&str> = by_repo.iter().map(|a| a.branch.as_str()).collect();
            return Verdict::Ignored(format!(
                "{} is not a deployed branch of {} (deployed: {})",
                self.git_ref,
                self.repository,
                branches.join(", ")
            ));
        }
        Verdict::Build(matched)
    }
}

/// The JSON document of a delivery: the body itself, or the `payload` field of a form.
pub fn payload_json(content_type: ContentType, body: &[u8]) -> Result<Vec<u8>, PayloadError> {
    match content_type {
        ContentType::Json => Ok(body.to_vec()),
        ContentType::Form => serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
            .map_err(|e| PayloadError::Json(format!("form body: {e}")))?
            .into_iter()
            .find(|(k, _)| k == "payload")
            .map(|(_, v)| v.into_bytes())
            .ok_or(PayloadError::NoPayloadField),
    }
}

/// Decides what to do with an authentic delivery from its event and payload.
pub fn decide(config: &Config, event: &str, content_type: ContentType, body: &[u8]) -> Verdict {
    let json = match payload_json(content_type, body) {
        Ok(json) => json,
        Err(e) => return Verdict::Rejected(e.to_string()),
    };
    match event {
        "ping" => match serde_json::from_slice::<serde_json::Value>(&json) {
            Ok(_) => Verdict::Pong,
            Err(e) => Verdict::Rejected(PayloadError::Json(e.to_string()).to_string()),
        },
        "push" => match Push::parse(&json) {
            Ok(push) => push.verdict(config),
            Err(e) => Verdict::Rejected(e.to_string()),
        },
        other => match serde_json::from_slice::<serde_json::Value>(&json) {
            Ok(_) => Verdict::Ignored(format!("slipway does not act on {other} events")),
            Err(e) => Verdict::Rejected(PayloadError::Json(e.to_string()).to_string()),
        },
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    Json,
    Form,
}

impl ContentType {
    pub fn from_header(value: Option<&str>) -> Option<ContentType> {
        let essence = value?.split(';').next()?.trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/json" => Some(ContentType::Json),
            "application/x-www-form-urlencoded" => Some(ContentType::Form),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            ContentType::Json => "application/json",
            ContentType::Form => "application/x-www-form-urlencoded",
        }
    }
}

/// The 32 bytes of a `<prefix><64 hex>` HMAC-SHA256 signature header, if it is one.
pub(crate) fn signature_bytes(header: &str, prefix: &str) -> Option<Vec<u8>> {
    let hex_part = header.strip_prefix(prefix)?;
    if hex_part.len() != 64 {
        return None;
    }
    hex::decode(hex_part).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_published_vectors() {
        assert_eq!(
            sign(b"It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
        assert_eq!(
            sign(b"mysecret", br#"{"foo":"bar"}"#),
            "sha256=4864d2759938a15468b5df9ade20bf161da9b4f737ea61794142f3484236bda3"
        );
    }

    #[test]
    fn verify_accepts_any_configured_secret_and_nothing_else() {
        let secrets = WebhookSecrets::parse(Some("old-webhook-secret,new-webhook-secret")).unwrap();
        let body = b"{}";
        assert_eq!(
            verify(&secrets, Some(&sign(b"old-webhook-secret", body)), body),
            Ok(())
        );
        assert_eq!(
            verify(&secrets, Some(&sign(b"new-webhook-secret", body)), body),
            Ok(())
        );
        assert_eq!(
            verify(&secrets, Some(&sign(b"other", body)), body),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(verify(&secrets, None, body), Err(SignatureError::Missing));
        assert_eq!(
            verify(&secrets, Some("sha1=abcd"), body),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(&secrets, Some(&format!("sha256={}", "z".repeat(64))), body),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn content_types() {
        assert_eq!(
            ContentType::from_header(Some("application/json; charset=utf-8")),
            Some(ContentType::Json)
        );
        assert_eq!(
            ContentType::from_header(Some("application/x-www-form-urlencoded")),
            Some(ContentType::Form)
        );
        assert_eq!(ContentType::from_header(Some("text/plain")), None);
        assert_eq!(ContentType::from_header(None), None);
    }

    #[test]
    fn push_parse_names_the_bad_field() {
        let e = Push::parse(
            br#"{"ref":"refs/heads/master","after":"nope","repository":{"full_name":"a/b"}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("after"), "{e}");
        let e = Push::parse(br#"{"ref":"refs/heads/master","after":"x"}"#).unwrap_err();
        assert!(e.to_string().contains("repository"), "{e}");
        let e = Push::parse(b"{not json").unwrap_err();
        assert!(matches!(e, PayloadError::Json(_)), "{e}");
    }
}
