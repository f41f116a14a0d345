//! Monorepos: which of the apps a push reaches it should build, judged by the files it changed
//! (`paths`, `paths_ignore`) and by skip markers in the head commit's message.
//!
//! The rule that governs everything here: never skip a build slipway cannot prove unneeded.
//! When the payload's file lists may be incomplete (GitHub caps them), when a push lists no
//! commits, or when it is a force-push, the app builds, unless a [`ChangedFilesSource`]
//! (GitHub's compare API) is configured and proves the changed files within
//! [`COMPARE_DEADLINE`]. A push that creates the branch always builds: there is no `before` to
//! compare with, and the default branch is no stand-in (a deleted and recreated release branch
//! would skip apps never built on it).

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use globset::{GlobSet, GlobSetBuilder};

/// GitHub lists at most this many commits in a push payload: a push listing this many may
/// have had more. (GitHub's docs give 20 for the commit list; webhooks may carry more, so a
/// list of 20 or more is always treated as possibly cut.)
pub const COMMITS_CAP: usize = 20;

/// GitHub reports at most this many changed files per commit, over its `added`, `removed` and
/// `modified` lists together ("A maximum of 3000 changed files will be reported per commit"),
/// and may leave all three empty for a very large commit.
pub const FILES_CAP: usize = 3000;

/// How long the webhook waits for the compare API before building to be safe. GitHub gives a
/// delivery 10 seconds in all; the journal write and the answer need the rest.
pub const COMPARE_DEADLINE: Duration = Duration::from_secs(4);

/// Commit-message markers that build nothing (as GitHub Actions honours them).
pub const SKIP_MARKERS: &[&str] = &[
    "[skip ci]",
    "[ci skip]",
    "[no ci]",
    "[skip slipway]",
    "[slipway skip]",
];

/// The first skip marker in `message`, if any (case-insensitive, as GitHub Actions).
pub fn skip_marker(message: &str) -> Option<&'static str> {
    let lower = message.to_ascii_lowercase();
    SKIP_MARKERS.iter().copied().find(|m| lower.contains(m))
}

/// A list of globs from the config, kept with their text so reasons can quote them.
#[derive(Debug, Clone)]
pub struct Globs {
    patterns: Vec<String>,
    set: GlobSet,
}

/// A glob that does not compile: which one (its index in the list) and why.
#[derive(Debug, thiserror::Error)]
#[error("[{index}] \"{pattern}\" is not a valid glob: {message}")]
pub struct GlobError {
    pub index: usize,
    pub pattern: String,
    pub message: String,
}

impl Globs {
    /// Compiles globs as GitHub Actions reads `paths`: `*` stays within one path segment, `**` crosses them,
    /// and a pattern ending in `/` means everything under that directory.
    pub fn new(patterns: Vec<String>) -> Result<Globs, GlobError> {
        let mut builder = GlobSetBuilder::new();
        for (index, pattern) in patterns.iter().enumerate() {
            let fail = |message: String| GlobError {
                index,
                pattern: pattern.clone(),
                message,
            };
            if pattern.trim().is_empty() {
                return Err(fail("must not be empty".into()));
            }
            // `services/web/` means the directory: everything under it.
            let text = match pattern.strip_suffix('/') {
                Some(dir) => format!("{dir}/**"),
                None => pattern.clone(),
            };
            let text = text.strip_prefix('/').unwrap_or(&text).to_owned();
            let glob = globset::GlobBuilder::new(&text)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| fail(e.kind().to_string()))?;
            builder.add(glob);
        }
        let set = builder.build().map_err(|e| GlobError {
            index: 0,
            pattern: patterns.join(", "),
            message: e.to_string(),
        })?;
        Ok(Globs { patterns, set })
    }

    pub fn is_match(&self, path: &str) -> bool {
        self.set.is_match(path)
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

/// One app's filter: the `paths`, `paths_ignore` and `honor_skip_markers` keys.
#[derive(Debug, Clone)]
pub struct PathRules {
    pub paths: Option<Globs>,
    pub paths_ignore: Option<Globs>,
    pub honor_skip_markers: bool,
}

impl Default for PathRules {
    fn default() -> Self {
        PathRules {
            paths: None,
            paths_ignore: None,
            honor_skip_markers: true,
        }
    }
}

impl PathRules {
    /// Whether the files a push changed matter to this app at all.
    pub fn filters_paths(&self) -> bool {
        self.paths.is_some() || self.paths_ignore.is_some()
    }

    /// Whether a change to `path` is one this app builds for.
    pub fn wants(&self, path: &str) -> bool {
        let included = self.paths.as_ref().is_none_or(|g| g.is_match(path));
        included && !self.paths_ignore.as_ref().is_some_and(|g| g.is_match(path))
    }

    /// Why none of `files` is wanted, naming the app's key(s) that decided it.
    fn no_match_reason(&self, app: &str, files: usize) -> String {
        let which = match (&self.paths, &self.paths_ignore) {
            (Some(_), None) => format!("no changed file matches {app}'s paths"),
            (None, Some(_)) => format!("every changed file matches {app}'s paths_ignore"),
            _ => format!("no changed file matches {app}'s paths outside its paths_ignore"),
        };
        let plural = if files == 1 { "" } else { "s" };
        format!("{which} ({files} file{plural} changed)")
    }
}

/// What slipway knows about the files a push changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// Every changed file (the payload's lists were complete, or the compare API answered).
    Listed(BTreeSet<String>),
    /// The list may be incomplete; why.
    Unknown(String),
}

/// The payload's facts about a push that the filter needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushFiles {
    /// The union of `added`, `modified` and `removed` over the listed commits.
    pub files: BTreeSet<String>,
    /// How many commits the payload lists.
    pub commits: usize,
    /// Some commit's file lists may be cut: at GitHub's cap together, or all empty.
    pub files_capped: bool,
    /// The push created the branch.
    pub created: bool,
    /// A force-push: the commits it lists need not explain the difference from `before`
    /// (what it dropped is changed too, and is listed nowhere).
    pub forced: bool,
    /// The head commit's message, if the payload has a head commit.
    pub head_message: Option<String>,
}

impl PushFiles {
    /// Adds one listed commit's `added`, `removed` and `modified` paths. A commit whose lists
    /// reach [`FILES_CAP`] together may have more; one whose lists are all empty may have had
    /// them left out (GitHub does for very large commits): either makes the files unknown.
    pub fn add_commit(&mut self, added: Vec<String>, removed: Vec<String>, modified: Vec<String>) {
        let listed = added.len() + removed.len() + modified.len();
        self.commits += 1;
        self.files_capped |= listed == 0 || listed >= FILES_CAP;
        self.files.extend(added);
        self.files.extend(removed);
        self.files.extend(modified);
    }

    /// Whether the compare API can prove what this push changed: not for a new branch (there
    /// is no `before`; comparing with another branch would miss what that branch never had).
    pub fn comparable(&self) -> bool {
        !self.created
    }

    /// The changed files, or why the payload cannot prove which files changed.
    pub fn changes(&self) -> Changes {
        if self.created {
            return Changes::Unknown("the push creates the branch".into());
        }
        if self.forced {
            return Changes::Unknown("a force-push lists only its new commits".into());
        }
        if self.commits == 0 {
            return Changes::Unknown("the push lists no commits".into());
        }
        if self.commits >= COMMITS_CAP {
            return Changes::Unknown(format!(
                "the push lists {} commits, GitHub's cap ({COMMITS_CAP})",
                self.commits
            ));
        }
        if self.files_capped {
            return Changes::Unknown(format!(
                "a commit lists {FILES_CAP} or more paths (GitHub's cap) or none at all"
            ));
        }
        if self.files.is_empty() {
            return Changes::Unknown("the push lists no changed files".into());
        }
        Changes::Listed(self.files.clone())
    }
}

/// What one app does with a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppDecision {
    Build,
    Skip(String),
}

/// Decides for one app, from the head commit's message and the changed files as known.
pub fn judge(
    app: &str,
    rules: &PathRules,
    head_message: Option<&str>,
    changes: &Changes,
) -> AppDecision {
    if rules.honor_skip_markers {
        if let Some(marker) = head_message.and_then(skip_marker) {
            return AppDecision::Skip(format!("the head commit's message says {marker}"));
        }
    }
    if !rules.filters_paths() {
        return AppDecision::Build;
    }
    match changes {
        Changes::Unknown(_) => AppDecision::Build,
        Changes::Listed(files) if files.iter().any(|f| rules.wants(f)) => AppDecision::Build,
        Changes::Listed(files) => AppDecision::Skip(rules.no_match_reason(app, files.len())),
    }
}

/// Why the compare API could not say which files changed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct CompareError(pub String);

/// A source of the complete list of files changed between two commits: GitHub's compare API
/// (`GET /repos/{repo}/compare/{base}...{head}`). An implementation must fail rather than
/// return a list it knows to be cut short, or one that does not cover every commit `head` has
/// and `base` does not (and the reverse: a force-push's dropped commits, which a comparison
/// from the merge base leaves out).
pub trait ChangedFilesSource: Send + Sync {
    fn changed_files<'a>(
        &'a self,
        repository: &'a str,
        base: &'a str,
        head: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<String>, CompareError>> + Send + 'a>>;
}

/// Asks `source` for the files changed between `base` and `head`, within [`COMPARE_DEADLINE`].
/// Anything but a full answer in time is `Changes::Unknown`, so the app builds.
pub async fn compare(
    source: &dyn ChangedFilesSource,
    repository: &str,
    base: &str,
    head: &str,
) -> Changes {
    match tokio::time::timeout(
        COMPARE_DEADLINE,
        source.changed_files(repository, base, head),
    )
    .await
    {
        Ok(Ok(files)) if !files.is_empty() => Changes::Listed(files.into_iter().collect()),
        Ok(Ok(_)) => Changes::Unknown("GitHub's compare lists no changed files".into()),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, repository, base, head, "compare API failed; building");
            Changes::Unknown(format!("GitHub's compare API failed: {e}"))
        }
        Err(_) => {
            tracing::warn!(repository, base, head, "compare API too slow; building");
            Changes::Unknown(format!(
                "GitHub's compare API did not answer within {}s",
                COMPARE_DEADLINE.as_secs()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn globs(p: &[&str]) -> Option<Globs> {
        Some(Globs::new(p.iter().map(|s| s.to_string()).collect()).unwrap())
    }

    fn listed(files: &[&str]) -> Changes {
        Changes::Listed(files.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn globs_read_like_github_actions_paths() {
        let g = globs(&["services/web/**", "libs/", "*.md", "/Dockerfile"]).unwrap();
        assert!(g.is_match("services/web/src/app.ts"));
        assert!(!g.is_match("services/webhooks/x.ts"));
        assert!(g.is_match("libs/auth/token.rs"));
        assert!(g.is_match("README.md"));
        assert!(
            !g.is_match("docs/README.md"),
            "`*` stays within one segment"
        );
        assert!(g.is_match("Dockerfile"));
    }

    #[test]
    fn bad_globs_are_named() {
        let e = Globs::new(vec!["ok/**".into(), "src/[a".into()]).unwrap_err();
        assert_eq!(e.index, 1);
        assert_eq!(e.pattern, "src/[a");
        assert!(e.to_string().contains("src/[a"), "{e}");
        assert!(Globs::new(vec![" ".into()]).is_err());
    }

    #[test]
    fn paths_ignore_wins_over_paths() {
        let rules = PathRules {
            paths: globs(&["services/web/**"]),
            paths_ignore: globs(&["**/*.md"]),
            honor_skip_markers: true,
        };
        assert_eq!(
            judge("web", &rules, None, &listed(&["services/web/README.md"])),
            AppDecision::Skip(
                "no changed file matches web's paths outside its paths_ignore (1 file changed)"
                    .into()
            )
        );
        assert_eq!(
            judge(
                "web",
                &rules,
                None,
                &listed(&["services/web/a.md", "services/web/a.ts"])
            ),
            AppDecision::Build
        );
    }

    #[test]
    fn unknown_changes_build_and_markers_skip() {
        let rules = PathRules {
            paths: globs(&["services/web/**"]),
            ..PathRules::default()
        };
        let unknown = Changes::Unknown("capped".into());
        assert_eq!(judge("web", &rules, None, &unknown), AppDecision::Build);
        assert_eq!(
            judge("web", &rules, Some("Fix\n\n[Skip CI]"), &unknown),
            AppDecision::Skip("the head commit's message says [skip ci]".into())
        );
        let deaf = PathRules {
            honor_skip_markers: false,
            ..rules
        };
        assert_eq!(
            judge("web", &deaf, Some("x [skip slipway]"), &unknown),
            AppDecision::Build
        );
    }

    #[test]
    fn payload_lists_that_may_be_cut_are_unknown() {
        let mut p = PushFiles {
            files: ["a".to_string()].into(),
            commits: 1,
            ..PushFiles::default()
        };
        assert!(matches!(p.changes(), Changes::Listed(_)));
        p.commits = COMMITS_CAP;
        assert!(matches!(p.changes(), Changes::Unknown(r) if r.contains("20 commits")));
        p.commits = 1;
        p.files_capped = true;
        assert!(matches!(p.changes(), Changes::Unknown(_)));
        p.files_capped = false;
        p.created = true;
        assert!(matches!(p.changes(), Changes::Unknown(r) if r.contains("creates")));
        p.created = false;
        p.forced = true;
        assert!(matches!(p.changes(), Changes::Unknown(r) if r.contains("force-push")));
        p.forced = false;
        p.commits = 0;
        assert!(matches!(p.changes(), Changes::Unknown(_)));
    }

    fn paths(n: usize, prefix: &str) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}/{i}")).collect()
    }

    #[test]
    fn a_commit_is_cut_at_3000_paths_over_its_three_lists_or_when_they_are_all_empty() {
        let mut p = PushFiles::default();
        p.add_commit(paths(1000, "a"), paths(1000, "r"), paths(999, "m"));
        assert!(matches!(p.changes(), Changes::Listed(f) if f.len() == 2999));
        p.add_commit(paths(1000, "a2"), paths(1000, "r2"), paths(1000, "m2"));
        assert!(
            matches!(p.changes(), Changes::Unknown(r) if r.contains("3000")),
            "3,000 together"
        );
        // A commit GitHub listed without its files, next to one with files.
        let mut p = PushFiles::default();
        p.add_commit(vec!["docs/a.md".into()], vec![], vec![]);
        assert!(matches!(p.changes(), Changes::Listed(_)));
        p.add_commit(vec![], vec![], vec![]);
        assert_eq!(p.commits, 2);
        assert!(matches!(p.changes(), Changes::Unknown(r) if r.contains("none at all")));
        // A new branch is never compared.
        let created = PushFiles {
            created: true,
            ..PushFiles::default()
        };
        assert!(!created.comparable());
        assert!(PushFiles::default().comparable());
    }

    struct Slow;
    impl ChangedFilesSource for Slow {
        fn changed_files<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            _: &'a str,
        ) -> Pin<Box<dyn Future<Output = Result<Vec<String>, CompareError>> + Send + 'a>> {
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(vec!["services/web/a".into()])
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_compare_builds() {
        let changes = compare(&Slow, "o/r", "a", "b").await;
        assert!(matches!(changes, Changes::Unknown(r) if r.contains("did not answer")));
    }
}
