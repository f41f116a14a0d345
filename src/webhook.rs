//! The push domain: GitHub's signature, the push parsed at the edge, and the verdict on it.
//!
//! Nothing here knows HTTP: `http::webhook` checks the headers, reads the body through a
//! `webhook_keys::Verifier`, checks the secret against [`repository_of`] and [`hook_bound`],
//! calls [`decide`], journals and answers.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::config::{AppConfig, Config, WebhookSecrets};
use crate::ids::CommitSha;
use crate::push_filter::{self, AppDecision, ChangedFilesSource, Changes, PushFiles};
use crate::store::{BuildRequest, SkippedApp, Verdict};

/// GitHub's payload cap.
pub const MAX_BODY_BYTES: usize = 25 * 1024 * 1024;

type HmacSha256 = Hmac<Sha256>;

/// `sha256=` + hex HMAC-SHA256 of `body` with `secret`, as GitHub sends it.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

pub use crate::webhook_keys::SignatureError;

/// Whether `header` (the `X-Hub-Signature-256` value) is the signature of `body` with one of
/// `secrets`, checked as a delivery's is (every secret, each in constant time); which
/// repository the secret may sign for is not asked here (see `webhook_keys`).
pub fn verify(
    secrets: &WebhookSecrets,
    header: Option<&str>,
    body: &[u8],
) -> Result<(), SignatureError> {
    let expected = signature_header(header)?;
    let ring = crate::webhook_keys::Keyring::default_only(secrets);
    let mut verifier = ring.verifier();
    verifier.update(body);
    verifier.finish(&expected).map(|_| ())
}

/// The 32 bytes of an `X-Hub-Signature-256` header, checked before a byte of the body is read.
pub fn signature_header(header: Option<&str>) -> Result<Vec<u8>, SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    signature_bytes(header, "sha256=").ok_or(SignatureError::Malformed)
}

/// What a delivery says it is about: `repository.full_name`, if its payload names one. Read
/// leniently (anything else in the payload is skipped unparsed): a payload that does not name a
/// repository is signed only by the default secret (`webhook_keys`).
pub fn repository_of(content_type: ContentType, body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Named {
        repository: Option<Repo>,
    }
    #[derive(Deserialize)]
    struct Repo {
        full_name: Option<String>,
    }
    let json = payload_json(content_type, body).ok()?;
    serde_json::from_slice::<Named>(&json)
        .ok()?
        .repository?
        .full_name
}

/// Whether hook `hook` may deliver about `repository`: where `[[github.hook]]` entries name
/// hooks of the repository (its own, its organisation's, or the App's), the delivery's
/// `X-GitHub-Hook-ID` must be one of them. Without such entries, any hook may.
pub fn hook_bound(
    github: Option<&crate::github::GithubConfig>,
    repository: Option<&str>,
    hook: &crate::ids::HookId,
) -> Result<(), String> {
    use crate::github::HookOwner;
    let (Some(github), Some(repository)) = (github, repository) else {
        return Ok(());
    };
    let owner = repository.split('/').next().unwrap_or("");
    let bound: Vec<u64> = github
        .hooks
        .iter()
        .filter(|h| match &h.owner {
            HookOwner::Repository(r) => r.eq_ignore_ascii_case(repository),
            HookOwner::Org(o) => o.eq_ignore_ascii_case(owner),
            HookOwner::App => true,
        })
        .map(|h| h.id)
        .collect();
    if bound.is_empty() || bound.iter().any(|id| id.to_string() == hook.as_str()) {
        return Ok(());
    }
    Err(format!(
        "hook {} is not a hook of repository {} ([[github.hook]])",
        clip(hook.as_str()),
        clip(repository)
    ))
}

/// At most 100 characters of an untrusted value, for an answer or a log field.
pub(crate) fn clip(value: &str) -> String {
    value.chars().take(100).collect()
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
    #[serde(default)]
    created: bool,
    #[serde(default)]
    forced: bool,
    repository: RepositoryField,
    #[serde(default)]
    commits: Option<Vec<CommitField>>,
    #[serde(default)]
    head_commit: Option<HeadCommitField>,
}

#[derive(Debug, Deserialize)]
struct RepositoryField {
    full_name: String,
    /// When GitHub received the push: Unix seconds in push payloads (an ISO string in most
    /// other events, so it is read leniently).
    #[serde(default)]
    pushed_at: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct CommitField {
    #[serde(default)]
    added: Option<Vec<String>>,
    #[serde(default)]
    removed: Option<Vec<String>>,
    #[serde(default)]
    modified: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct HeadCommitField {
    /// The commit itself; for a tag push, the commit the tag points to (`after` is the tag
    /// object's SHA for an annotated tag).
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// A push, parsed at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    pub repository: String,
    pub git_ref: String,
    /// The commit the branch pointed at before (None for a new branch).
    pub before: Option<CommitSha>,
    /// The commit pushed: `after`, except for a tag push, where it is the commit the tag
    /// points to (`head_commit.id`; without it, `after`, and the verdict ignores the push).
    pub after: CommitSha,
    pub deleted: bool,
    /// For a tag push: whether `head_commit.id` named the tagged commit.
    pub tag_commit_known: bool,
    /// When GitHub received the push (`repository.pushed_at`, Unix seconds): deploys of a
    /// service rank by it, whatever order the deliveries arrive in.
    pub pushed_at: Option<i64>,
    /// What the payload says about the files this push changed (monorepo filters).
    pub files: PushFiles,
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
        // The common case parses without tracking paths; only a payload that fails is parsed
        // again to say where.
        let de = &mut serde_json::Deserializer::from_slice(json);
        let raw = match <PushPayload as serde::Deserialize>::deserialize(de) {
            Ok(raw) => raw,
            Err(_) => return Err(Push::explain(json)),
        };
        Push::from_raw(raw)
    }

    /// Why `json` is not a push payload, with the path of the field at fault.
    fn explain(json: &[u8]) -> PayloadError {
        let de = &mut serde_json::Deserializer::from_slice(json);
        match serde_path_to_error::deserialize::<_, PushPayload>(de) {
            // Both parse the same way; this one only tracks where it is.
            Ok(_) => PayloadError::Json("the payload does not parse as a push".into()),
            Err(e) => {
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
            }
        }
    }

    fn from_raw(raw: PushPayload) -> Result<Push, PayloadError> {
        let after = CommitSha::parse(&raw.after).map_err(|e| PayloadError::Field {
            path: "after".into(),
            message: e.0,
        })?;
        let before = raw
            .before
            .as_deref()
            .and_then(|b| CommitSha::parse(b).ok())
            .filter(|b| !b.is_zero());
        let commits = raw.commits.unwrap_or_default();
        let head_id = raw
            .head_commit
            .as_ref()
            .and_then(|c| c.id.as_deref())
            .and_then(|id| CommitSha::parse(id).ok());
        // An annotated tag's `after` is the tag object, not a commit: build what it points to
        // (GitHub sends `head_commit` on tag creation since 2021-10-01).
        let is_tag = raw.git_ref.starts_with("refs/tags/");
        let (after, tag_commit_known) = match head_id {
            Some(commit) if is_tag => (commit, true),
            _ => (after, false),
        };
        let mut files = PushFiles {
            created: raw.created || before.is_none(),
            forced: raw.forced,
            head_message: raw.head_commit.and_then(|c| c.message),
            ..PushFiles::default()
        };
        for c in commits {
            files.add_commit(
                c.added.unwrap_or_default(),
                c.removed.unwrap_or_default(),
                c.modified.unwrap_or_default(),
            );
        }
        Ok(Push {
            repository: raw.repository.full_name,
            git_ref: raw.git_ref,
            before,
            after,
            deleted: raw.deleted,
            tag_commit_known,
            pushed_at: raw.repository.pushed_at.as_ref().and_then(unix_seconds),
            files,
        })
    }

    /// The commit to compare this push's head with: its `before`. None for a new branch,
    /// which builds every app it reaches (see [`PushFiles::comparable`]).
    fn compare_base(&self) -> Option<String> {
        self.before
            .as_ref()
            .filter(|_| self.files.comparable())
            .map(|b| b.to_string())
    }

    /// [`Push::verdict`], after asking `github` for the changed files when the payload's lists
    /// cannot prove them and some app filters by path.
    pub async fn verdict_with(
        &self,
        config: &Config,
        github: Option<&dyn ChangedFilesSource>,
    ) -> Verdict {
        let mut changes = self.files.changes();
        let wants_files = !self.deleted
            && !self.after.is_zero()
            && self.tag().is_none()
            && config.apps.iter().any(|a| {
                a.path_rules.filters_paths()
                    && a.deploys_ref(&self.git_ref)
                    && a.repository.eq_ignore_ascii_case(&self.repository)
            });
        if let (Changes::Unknown(why), Some(github), true) = (&changes, github, wants_files) {
            if let Some(base) = self.compare_base() {
                tracing::info!(%why, %base, "asking GitHub's compare API for the changed files");
                changes =
                    push_filter::compare(github, &self.repository, &base, self.after.as_str())
                        .await;
            }
        }
        self.verdict_for(config, &changes)
    }

    /// Which apps this push builds, or why none, from the payload alone.
    pub fn verdict(&self, config: &Config) -> Verdict {
        self.verdict_for(config, &self.files.changes())
    }

    /// The tag this push is about (`refs/tags/<tag>`), if it is a tag push.
    pub fn tag(&self) -> Option<&str> {
        self.git_ref.strip_prefix("refs/tags/")
    }

    /// Which apps this push builds, or why none, with the changed files as known.
    ///
    /// A tag push (`tags`) is a deliberate release: it builds every app whose `tags` it
    /// matches, whatever `paths`, `paths_ignore` and skip markers say (GitHub's tag push has
    /// no `before` to compare with, and its commit list is empty or the whole history).
    fn verdict_for(&self, config: &Config, changes: &Changes) -> Verdict {
        if self.deleted || self.after.is_zero() {
            return Verdict::Ignored(match self.tag() {
                Some(tag) => format!("tag {tag} was deleted: a deletion deploys nothing"),
                None => format!("{} was deleted", self.git_ref),
            });
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
        let on_ref: Vec<&&AppConfig> = by_repo
            .iter()
            .filter(|a| a.deploys_ref(&self.git_ref))
            .collect();
        if let (Some(tag), false, false) = (self.tag(), on_ref.is_empty(), self.tag_commit_known) {
            // `after` may be an annotated tag's object, which neither CodeBuild nor GitHub's
            // statuses take for a commit: say so rather than build the wrong thing.
            return Verdict::Ignored(format!(
                "tag {tag}: the payload has no head_commit.id, so the tagged commit is not known \
                 (deploy it with `slipway deploy`)"
            ));
        }
        let mut skipped = Vec::new();
        let matched: Vec<BuildRequest> = on_ref
            .iter()
            .filter(|a| {
                if let Some(p) = &a.promote {
                    // Its deploys come from its source's (`promote::Promoter`), never a build.
                    skipped.push(SkippedApp {
                        app: a.name.clone(),
                        reason: match self.tag() {
                            Some(tag) => format!(
                                "{} is promoted from {}: tag {tag} promotes the image {} ran \
                                 (no build)",
                                a.name, p.from, p.from
                            ),
                            None => format!(
                                "{} is promoted from {}: it deploys what {} ran and never builds",
                                a.name, p.from, p.from
                            ),
                        },
                    });
                    return false;
                }
                if self.tag().is_some() {
                    return true;
                }
                let head = self.files.head_message.as_deref();
                match push_filter::judge(a.name.as_str(), &a.path_rules, head, changes) {
                    AppDecision::Build => true,
                    AppDecision::Skip(reason) => {
                        skipped.push(SkippedApp {
                            app: a.name.clone(),
                            reason,
                        });
                        false
                    }
                }
            })
            .map(|a| BuildRequest {
                app: a.name.clone(),
                sha: self.after.clone(),
                project: a.codebuild_project.clone().unwrap_or_default(),
                image_tag: a.tag_for(&self.after),
                service_key: a.service_key(),
                before: self.before.as_ref().map(|b| b.to_string()),
                pushed_at: self.pushed_at,
                tag: self.tag().map(str::to_owned),
            })
            .collect();
        if !skipped.is_empty() {
            if matched.is_empty() {
                let mut reasons: Vec<&str> = Vec::new();
                for s in &skipped {
                    // A skip marker gives every app the same reason: say it once.
                    if !reasons.contains(&s.reason.as_str()) {
                        reasons.push(&s.reason);
                    }
                }
                return Verdict::Ignored(reasons.join("; "));
            }
            return Verdict::BuildSome {
                builds: matched,
                skipped,
            };
        }
        if matched.is_empty() {
            if let Some(tag) = self.tag() {
                let globs: Vec<&str> = by_repo
                    .iter()
                    .filter_map(|a| a.tags.as_ref())
                    .flat_map(|t| t.patterns().iter().map(String::as_str))
                    .collect();
                return Verdict::Ignored(if globs.is_empty() {
                    format!(
                        "tag {tag} is not deployed: no app of {} sets `tags`",
                        self.repository
                    )
                } else {
                    format!(
                        "tag {tag} matches no app's tags in {} (tags: {})",
                        self.repository,
                        globs.join(", ")
                    )
                });
            }
            let branches: Vec<&str> = by_repo.iter().filter_map(|a| a.branch.as_deref()).collect();
            let deployed = if branches.is_empty() {
                "its apps deploy only tags".to_owned()
            } else {
                format!("deployed: {}", branches.join(", "))
            };
            return Verdict::Ignored(format!(
                "{} is not a deployed branch of {} ({deployed})",
                self.git_ref, self.repository,
            ));
        }
        Verdict::Build(matched)
    }
}

/// Unix seconds from a number, or from an RFC 3339 string.
fn unix_seconds(v: &serde_json::Value) -> Option<i64> {
    match v {
        serde_json::Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        serde_json::Value::String(s) => crate::clock::parse(s).map(|t| t.unix_timestamp()),
        _ => None,
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

/// Decides what to do with an authentic delivery from its event and payload. `github`, when
/// configured, completes the changed files of a push whose payload cannot prove them.
pub async fn decide(
    config: &Config,
    event: &str,
    content_type: ContentType,
    body: &[u8],
    github: Option<&dyn ChangedFilesSource>,
) -> Verdict {
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
            Ok(push) => push.verdict_with(config, github).await,
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

/// The apps a push did not build, and why, as the 202 and a replay's answer list them.
pub fn skipped_json(skipped: &[SkippedApp]) -> Vec<serde_json::Value> {
    skipped
        .iter()
        .map(|s| serde_json::json!({ "app": s.app, "reason": s.reason }))
        .collect()
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
    fn signature_headers_are_checked_before_the_body() {
        assert_eq!(signature_header(None), Err(SignatureError::Missing));
        assert_eq!(
            signature_header(Some("sha1=abcd")),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            signature_header(Some(&format!("sha256={}", "z".repeat(64)))),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            signature_header(Some(&sign(b"k", b"{}"))).unwrap().len(),
            32
        );
    }

    #[test]
    fn the_repository_is_read_leniently() {
        let json = ContentType::Json;
        assert_eq!(
            repository_of(
                json,
                br#"{"repository":{"full_name":"a/b","id":1},"x":[1]}"#
            )
            .as_deref(),
            Some("a/b")
        );
        assert_eq!(repository_of(json, br#"{"zen":"x"}"#), None);
        assert_eq!(
            repository_of(json, br#"{"repository":{"full_name":5}}"#),
            None
        );
        assert_eq!(repository_of(json, b"not json"), None);
        let form = b"payload=%7B%22repository%22%3A%7B%22full_name%22%3A%22a%2Fb%22%7D%7D";
        assert_eq!(
            repository_of(ContentType::Form, form).as_deref(),
            Some("a/b")
        );
    }

    #[test]
    fn named_hooks_bind_their_repositories() {
        let github = toml::from_str::<crate::github::RawGithubConfig>(
            "[[hook]]\nrepository = \"octo-org/web\"\nid = 11\n\
             [[hook]]\norg = \"octo-org\"\nid = 22\n",
        )
        .unwrap()
        .validate()
        .unwrap();
        let hook = |id: &str| crate::ids::HookId::parse(Some(id)).unwrap();
        assert!(hook_bound(Some(&github), Some("octo-org/web"), &hook("11")).is_ok());
        assert!(hook_bound(Some(&github), Some("Octo-Org/api"), &hook("22")).is_ok());
        let e = hook_bound(Some(&github), Some("octo-org/web"), &hook("33")).unwrap_err();
        assert!(
            e.contains("hook 33 is not a hook of repository octo-org/web"),
            "{e}"
        );
        // No entry names hooks of this repository: any hook.
        assert!(hook_bound(Some(&github), Some("other/x"), &hook("33")).is_ok());
        assert!(hook_bound(None, Some("octo-org/web"), &hook("33")).is_ok());
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

    /// GitHub's compare API as a fixed answer, counting calls.
    struct Compare(Vec<&'static str>, std::sync::atomic::AtomicUsize);

    impl ChangedFilesSource for Compare {
        fn changed_files<'a>(
            &'a self,
            repository: &'a str,
            base: &'a str,
            head: &'a str,
        ) -> std::pin::Pin<
            Box<
                dyn std::future::Future<
                        Output = Result<Vec<String>, crate::push_filter::CompareError>,
                    > + Send
                    + 'a,
            >,
        > {
            assert_eq!(repository, "octo-org/monorepo");
            assert_eq!(base, "a3b1c2d4e5f60718293a4b5c6d7e8f9012345678");
            assert_eq!(head, "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c");
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let files = self.0.iter().map(|f| f.to_string()).collect();
            Box::pin(async move { Ok(files) })
        }
    }

    fn monorepo_config() -> Config {
        let app = |name: &str| {
            format!(
                "[[app]]\nname = \"{name}\"\nrepository = \"octo-org/monorepo\"\n\
                 codebuild_project = \"{name}-build\"\ncluster = \"c\"\nservice = \"{name}\"\n\
                 container = \"{name}\"\necr_repository = \"{name}\"\n\
                 paths = [\"services/{name}/**\"]\n"
            )
        };
        Config::parse(&format!("state_dir = \"/x\"\n{}{}", app("web"), app("api"))).unwrap()
    }

    fn built(verdict: &Verdict) -> Vec<String> {
        match verdict {
            Verdict::Build(b) | Verdict::BuildSome { builds: b, .. } => {
                b.iter().map(|b| b.app.to_string()).collect()
            }
            other => panic!("no build: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_capped_push_asks_the_compare_api_only_when_it_must() {
        let config = monorepo_config();
        let capped = Push::parse(include_bytes!(
            "../fixtures/github/monorepo/push_capped.json"
        ))
        .unwrap();
        let github = Compare(vec!["services/web/a.ts"], Default::default());
        // Without credentials: every app builds.
        assert_eq!(
            built(&capped.verdict_with(&config, None).await),
            ["web", "api"]
        );
        // With them: only what the compare API shows changed.
        let verdict = capped.verdict_with(&config, Some(&github)).await;
        assert_eq!(built(&verdict), ["web"]);
        assert_eq!(verdict.skipped()[0].app.as_str(), "api");
        assert_eq!(github.1.load(std::sync::atomic::Ordering::SeqCst), 1);
        // A payload whose lists are complete is decided without asking.
        let web = Push::parse(include_bytes!("../fixtures/github/monorepo/push_web.json")).unwrap();
        assert_eq!(
            built(&web.verdict_with(&config, Some(&github)).await),
            ["web"]
        );
        assert_eq!(github.1.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Nor is a branch deletion (its empty commit list proves nothing, and builds nothing).
        let deleted = Push::parse(
            br#"{"ref":"refs/heads/master","before":"a3b1c2d4e5f60718293a4b5c6d7e8f9012345678",
                 "after":"0000000000000000000000000000000000000000","deleted":true,
                 "repository":{"full_name":"octo-org/monorepo"},"commits":[],"head_commit":null}"#,
        )
        .unwrap();
        let verdict = deleted.verdict_with(&config, Some(&github)).await;
        assert!(matches!(verdict, Verdict::Ignored(r) if r.contains("deleted")));
        assert_eq!(github.1.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_tag_push_builds_its_apps_whatever_their_paths_and_asks_no_compare() {
        let config = Config::parse(&format!(
            "state_dir = \"/x\"\n{}",
            ["web", "api"]
                .iter()
                .map(|name| format!(
                    "[[app]]\nname = \"{name}\"\nrepository = \"octo-org/monorepo\"\n\
                     codebuild_project = \"{name}-build\"\ncluster = \"c\"\nservice = \"{name}\"\n\
                     container = \"{name}\"\necr_repository = \"{name}\"\n\
                     paths = [\"services/{name}/**\"]\n{}",
                    if *name == "web" {
                        "tags = [\"v*\"]\n"
                    } else {
                        ""
                    }
                ))
                .collect::<String>()
        ))
        .unwrap();
        // GitHub's tag push: `before` all zeros, the commit's files unrelated to `web`, and a
        // skip marker in its message. A release is deliberate: `web` builds; `api` sets no tags.
        let push = Push::parse(
            br#"{"ref":"refs/tags/v2.0.0","before":"0000000000000000000000000000000000000000",
                 "after":"1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c","created":true,
                 "base_ref":"refs/heads/master","repository":{"full_name":"octo-org/monorepo"},
                 "commits":[{"added":["docs/x.md"]}],
                 "head_commit":{"id":"1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c",
                                "message":"docs [skip ci]"}}"#,
        )
        .unwrap();
        let github = Compare(vec![], Default::default());
        let verdict = push.verdict_with(&config, Some(&github)).await;
        // An annotated tag: `after` is the tag object; the build is of `head_commit.id`.
        let annotated = Push::parse(
            br#"{"ref":"refs/tags/v2.0.0","before":"0000000000000000000000000000000000000000",
                 "after":"abababababababababababababababababababab","created":true,
                 "repository":{"full_name":"octo-org/monorepo"},"commits":[],
                 "head_commit":{"id":"1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c","message":"m"}}"#,
        )
        .unwrap();
        assert_eq!(
            annotated.after.as_str(),
            "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c"
        );
        assert_eq!(built(&annotated.verdict(&config)), ["web"]);
        // Without head_commit the tagged commit is not known: ignored, saying why.
        let unknown = Push::parse(
            br#"{"ref":"refs/tags/v2.0.0","after":"abababababababababababababababababababab",
                 "repository":{"full_name":"octo-org/monorepo"},"head_commit":null}"#,
        )
        .unwrap();
        assert!(
            matches!(unknown.verdict(&config), Verdict::Ignored(r) if r.contains("no head_commit.id")),
        );
        assert_eq!(built(&verdict), ["web"]);
        assert!(verdict.skipped().is_empty());
        let Verdict::Build(builds) = &verdict else {
            panic!("{verdict:?}")
        };
        assert_eq!(builds[0].tag.as_deref(), Some("v2.0.0"));
        assert_eq!(builds[0].before, None);
        assert_eq!(github.1.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[test]
    fn push_parse_collects_the_changed_files() {
        let push = Push::parse(
            br#"{"ref":"refs/heads/master","before":"a3b1c2d4e5f60718293a4b5c6d7e8f9012345678",
                 "after":"1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c","repository":{"full_name":"a/b"},
                 "commits":[{"added":["x"],"removed":null,"modified":["y","x"]},{"removed":["z"]}],
                 "head_commit":{"message":"m [no ci]"}}"#,
        )
        .unwrap();
        let files: Vec<&str> = push.files.files.iter().map(String::as_str).collect();
        assert_eq!(files, ["x", "y", "z"]);
        assert_eq!(push.files.commits, 2);
        assert!(!push.files.created && !push.files.files_capped);
        assert_eq!(push.files.head_message.as_deref(), Some("m [no ci]"));
        let bare = Push::parse(
            br#"{"ref":"refs/heads/master","after":"1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c",
                 "repository":{"full_name":"a/b"},"commits":null,"head_commit":null}"#,
        )
        .unwrap();
        assert!(bare.files.created, "no before: treated as a new branch");
        assert_eq!(bare.pushed_at, None);
        let web = Push::parse(include_bytes!("../fixtures/github/monorepo/push_web.json")).unwrap();
        assert_eq!(web.pushed_at, Some(1_787_306_398));
        let iso = Push::parse(
            br#"{"ref":"refs/heads/master","after":"1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c",
                 "repository":{"full_name":"a/b","pushed_at":"2026-08-21T09:59:58Z"}}"#,
        )
        .unwrap();
        assert_eq!(iso.pushed_at, Some(1_787_306_398));
        assert_eq!(bare.files.commits, 0);
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
        // A nested field of the wrong type is named by its path (found by the second parse).
        let e =
            Push::parse(br#"{"ref":"refs/heads/master","after":"x","repository":{"full_name":5}}"#)
                .unwrap_err();
        assert!(
            matches!(&e, PayloadError::Field { path, .. } if path == "repository.full_name"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod promotion_tests {
    use super::*;

    /// Issue 27: a push reaching a promoted app never builds it, and says why.
    #[test]
    fn a_push_never_builds_a_promoted_app() {
        let config = Config::parse(
            "state_dir = \"/x\"\n\
             [[app]]\nname = \"web\"\nrepository = \"octo-org/web\"\n\
             codebuild_project = \"web-build\"\ncluster = \"c\"\nservice = \"web\"\n\
             container = \"web\"\necr_repository = \"web\"\n\
             [[app]]\nname = \"web-prod\"\nrepository = \"octo-org/web\"\n\
             cluster = \"c\"\nservice = \"web-prod\"\ncontainer = \"web\"\n\
             ecr_repository = \"web\"\npromote_from = \"web\"\ntags = [\"v*\"]\n",
        )
        .unwrap();
        let branch = Push::parse(include_bytes!("../fixtures/github/push_master.json")).unwrap();
        let Verdict::Build(builds) = branch.verdict(&config) else {
            panic!("{:?}", branch.verdict(&config))
        };
        assert_eq!(
            builds.iter().map(|b| b.app.as_str()).collect::<Vec<_>>(),
            ["web"]
        );
        // A tag only the promoted app matches: nothing builds, and the reason says the tag
        // promotes instead.
        let mut tag: serde_json::Value =
            serde_json::from_slice(include_bytes!("../fixtures/github/push_tag.json")).unwrap();
        tag["ref"] = "refs/tags/v1.0.0".into();
        let tag = Push::parse(&serde_json::to_vec(&tag).unwrap()).unwrap();
        match tag.verdict(&config) {
            Verdict::Ignored(reason) => assert_eq!(
                reason,
                "web-prod is promoted from web: tag v1.0.0 promotes the image web ran (no build)"
            ),
            other => panic!("{other:?}"),
        }
    }
}
