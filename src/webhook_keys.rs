//! Which webhook secrets sign which repositories (issue 23 item 3).
//!
//! Each app names the environment variable that holds its repository's secrets
//! (`webhook_secret_env`, comma-separated for rotation); apps without one use
//! `SLIPWAY_WEBHOOK_SECRET`, which also signs deliveries for repositories no app names and
//! deliveries without a repository (an organisation hook's `ping`). A delivery is accepted only
//! if its signature verifies with a secret bound to its `repository.full_name`, so the admin of
//! one repository cannot sign a push for another app's repository.
//!
//! The body is streamed once through an HMAC per secret (all of them: the signature is checked
//! before the body is parsed); which secrets matched is kept, and checked against the
//! repository once the payload is parsed.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::{Config, ConfigError, Secret, WebhookSecrets, WEBHOOK_SECRET_ENV};

type HmacSha256 = Hmac<Sha256>;

/// Why a delivery's signature is refused. Here, with the keys, so that the push domain
/// (`webhook`) depends on the keys and not the reverse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("missing X-Hub-Signature-256 header")]
    Missing,
    #[error("malformed X-Hub-Signature-256 header")]
    Malformed,
    #[error("signature does not match")]
    Mismatch,
    /// The signature matched a secret, but not one bound to what the delivery is about.
    #[error("signature does not match a webhook secret of {0}")]
    NotBound(String),
}

/// One environment variable's secrets and the repositories they sign.
#[derive(Debug)]
struct Source {
    env: String,
    /// Lowercase `owner/name` of the apps that name this variable.
    repositories: Vec<String>,
}

/// Every webhook secret slipway knows, each bound to the repositories it may sign.
#[derive(Debug)]
pub struct Keyring {
    sources: Vec<Source>,
    /// (index into `sources`, secret).
    keys: Vec<(usize, Secret)>,
    /// Lowercase `owner/name` of every app's repository.
    known: Vec<String>,
}

impl Keyring {
    /// The secrets `config` names, read through `env`. `SLIPWAY_WEBHOOK_SECRET` is required
    /// when an app uses it (has no `webhook_secret_env`), optional otherwise.
    pub fn load(
        config: &Config,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Keyring, ConfigError> {
        let mut sources: Vec<Source> = Vec::new();
        for app in &config.apps {
            let repository = app.repository.to_ascii_lowercase();
            match sources.iter_mut().find(|s| s.env == app.webhook_secret_env) {
                Some(source) => source.repositories.push(repository),
                None => sources.push(Source {
                    env: app.webhook_secret_env.clone(),
                    repositories: vec![repository],
                }),
            }
        }
        let mut keys = Vec::new();
        for (i, source) in sources.iter().enumerate() {
            let secrets = WebhookSecrets::parse_named(&source.env, env(&source.env).as_deref())?;
            keys.extend(secrets.iter().map(|s| (i, s.clone())));
        }
        // The default, when no app names it: only for repositories no app names.
        if !sources.iter().any(|s| s.env == WEBHOOK_SECRET_ENV) {
            if let Some(value) = env(WEBHOOK_SECRET_ENV) {
                let secrets = WebhookSecrets::parse_named(WEBHOOK_SECRET_ENV, Some(&value))?;
                let i = sources.len();
                sources.push(Source {
                    env: WEBHOOK_SECRET_ENV.to_owned(),
                    repositories: Vec::new(),
                });
                keys.extend(secrets.iter().map(|s| (i, s.clone())));
            }
        }
        let known = config
            .apps
            .iter()
            .map(|a| a.repository.to_ascii_lowercase())
            .collect();
        Ok(Keyring {
            sources,
            keys,
            known,
        })
    }

    /// `secrets` as the default (`SLIPWAY_WEBHOOK_SECRET`) for a configuration without apps.
    pub fn default_only(secrets: &WebhookSecrets) -> Keyring {
        Keyring {
            sources: vec![Source {
                env: WEBHOOK_SECRET_ENV.to_owned(),
                repositories: Vec::new(),
            }],
            keys: secrets.iter().map(|s| (0, s.clone())).collect(),
            known: Vec::new(),
        }
    }

    /// A verifier for one delivery's body.
    pub fn verifier(&self) -> Verifier<'_> {
        Verifier {
            ring: self,
            macs: self
                .keys
                .iter()
                .map(|(_, s)| HmacSha256::new_from_slice(s.expose()).expect("any key length"))
                .collect(),
        }
    }

    /// Whether secrets of `source` may sign a delivery about `repository` (None: the payload
    /// names none).
    fn binds(&self, source: usize, repository: Option<&str>) -> bool {
        let source = &self.sources[source];
        let default = source.env == WEBHOOK_SECRET_ENV;
        match repository.map(str::to_ascii_lowercase) {
            None => default,
            Some(repo) => {
                source.repositories.contains(&repo) || (default && !self.known.contains(&repo))
            }
        }
    }
}

/// The HMACs of one body as it streams, one per secret.
pub struct Verifier<'a> {
    ring: &'a Keyring,
    macs: Vec<HmacSha256>,
}

impl<'a> Verifier<'a> {
    pub fn update(&mut self, chunk: &[u8]) {
        for mac in &mut self.macs {
            mac.update(chunk);
        }
    }

    /// Checks `expected` (the 32 bytes of `X-Hub-Signature-256`) against every secret, each in
    /// constant time and all of them whatever matched, so the time taken does not tell which.
    pub fn finish(self, expected: &[u8]) -> Result<Signed<'a>, SignatureError> {
        let mut matched = Vec::new();
        for ((source, _), mac) in self.ring.keys.iter().zip(self.macs) {
            if mac.verify_slice(expected).is_ok() {
                matched.push(*source);
            }
        }
        if matched.is_empty() {
            return Err(SignatureError::Mismatch);
        }
        Ok(Signed {
            ring: self.ring,
            matched,
        })
    }
}

/// A body whose signature matched some secret; which repositories it may speak for is checked
/// once the payload is parsed.
pub struct Signed<'a> {
    ring: &'a Keyring,
    matched: Vec<usize>,
}

impl Signed<'_> {
    /// Ok if one of the secrets that matched is bound to `repository`.
    pub fn check(&self, repository: Option<&str>) -> Result<(), SignatureError> {
        if self.matched.iter().any(|&s| self.ring.binds(s, repository)) {
            return Ok(());
        }
        Err(SignatureError::NotBound(match repository {
            // At most 100 characters of the untrusted name (as `webhook::clip`).
            Some(repo) => format!("repository {}", repo.chars().take(100).collect::<String>()),
            None => "a delivery without a repository".to_owned(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "secret-of-repository-a";
    const B: &str = "secret-of-repository-b";
    const DEFAULT: &str = "the-default-webhook-secret";

    fn config(b_env: &str) -> Config {
        let app = |name: &str, repo: &str, extra: &str| {
            format!(
                "[[app]]\nname = \"{name}\"\nrepository = \"{repo}\"\n\
                 codebuild_project = \"{name}\"\ncluster = \"c\"\nservice = \"{name}\"\n\
                 container = \"{name}\"\necr_repository = \"{name}\"\n{extra}\n"
            )
        };
        Config::parse(&format!(
            "state_dir = \"/x\"\n{}{}",
            app("a", "octo-org/a", "webhook_secret_env = \"SECRET_A\""),
            app("b", "octo-org/b", b_env)
        ))
        .unwrap()
    }

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    fn signed(ring: &Keyring, secret: &str, repo: Option<&str>) -> Result<(), SignatureError> {
        let body = b"{}";
        let mut v = ring.verifier();
        v.update(body);
        let header = crate::webhook::sign(secret.as_bytes(), body);
        let expected = crate::webhook::signature_bytes(&header, "sha256=").unwrap();
        v.finish(&expected)?.check(repo)
    }

    #[test]
    fn a_secret_signs_only_its_own_repositories() {
        let ring = Keyring::load(
            &config("webhook_secret_env = \"SECRET_B\""),
            &env(&[
                ("SECRET_A", A),
                ("SECRET_B", B),
                (WEBHOOK_SECRET_ENV, DEFAULT),
            ]),
        )
        .unwrap();
        assert_eq!(signed(&ring, A, Some("octo-org/a")), Ok(()));
        assert_eq!(signed(&ring, A, Some("Octo-Org/A")), Ok(()));
        assert_eq!(signed(&ring, B, Some("octo-org/b")), Ok(()));
        assert!(matches!(
            signed(&ring, A, Some("octo-org/b")),
            Err(SignatureError::NotBound(r)) if r == "repository octo-org/b"
        ));
        // The default signs repositories no app names, and deliveries without one.
        assert!(signed(&ring, DEFAULT, Some("octo-org/a")).is_err());
        assert_eq!(signed(&ring, DEFAULT, Some("octo-org/other")), Ok(()));
        assert_eq!(signed(&ring, DEFAULT, None), Ok(()));
        assert!(signed(&ring, A, None).is_err());
        assert_eq!(
            signed(&ring, "unknown-secret-value", Some("octo-org/a")),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn apps_without_their_own_use_the_default_which_is_then_required() {
        let e = Keyring::load(&config(""), &env(&[("SECRET_A", A)])).unwrap_err();
        assert!(
            e.to_string().contains("SLIPWAY_WEBHOOK_SECRET is not set"),
            "{e}"
        );
        let ring = Keyring::load(
            &config(""),
            &env(&[("SECRET_A", A), (WEBHOOK_SECRET_ENV, DEFAULT)]),
        )
        .unwrap();
        assert_eq!(signed(&ring, DEFAULT, Some("octo-org/b")), Ok(()));
        assert!(signed(&ring, DEFAULT, Some("octo-org/a")).is_err());
        // Every app with its own: the default is optional.
        let ring = Keyring::load(
            &config("webhook_secret_env = \"SECRET_B\""),
            &env(&[
                ("SECRET_A", A),
                ("SECRET_B", "old-secret-of-b-0000,new-secret-of-b-0000"),
            ]),
        );
        assert!(ring.is_ok());
        let e = Keyring::load(
            &config("webhook_secret_env = \"SECRET_B\""),
            &env(&[("SECRET_A", A), ("SECRET_B", "short")]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("SECRET_B: secret 1 of 1 is shorter"), "{e}");
    }
}
