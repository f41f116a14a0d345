//! The files changed between two commits, from GitHub's compare API (for the monorepo path
//! filters: an app builds only when a push touches its paths).
//!
//! `GET /repos/{owner}/{repo}/compare/{base}...{head}` (docs.github.com, "Compare two
//! commits"): the comparison is made from the merge base of the two commits; its `status` is
//! `ahead` (head is base plus commits), `behind`, `identical` or `diverged` (both have commits
//! the other lacks, as after a force-push). Its `files` (at most 300) come only on the first
//! page; later pages list more commits and nothing slipway reads.

use std::collections::BTreeSet;

use reqwest::Method;
use serde::Deserialize;

use super::client::{As, Client};
use super::GithubError;

/// GitHub lists at most this many files for a comparison, whatever the page.
pub const MAX_COMPARE_FILES: usize = 300;
/// Commits per page: the files come with the first page whatever its size, so one commit is
/// all slipway asks for (the answer stays small).
const PER_PAGE: u32 = 1;

/// The changed paths, sorted. Renames list both the old and the new path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedFiles {
    pub files: Vec<String>,
    /// GitHub's `status` of the comparison (`ahead`, `behind`, `identical`, `diverged`).
    pub status: String,
    /// True only when `files` are every file `head` changed since `base`: the comparison is
    /// `ahead` (with `diverged` the files from the merge base leave out what `base` had and
    /// `head` dropped) and GitHub's list was not cut at [`MAX_COMPARE_FILES`].
    pub complete: bool,
}

#[derive(Deserialize)]
struct Comparison {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    files: Vec<File>,
}

#[derive(Deserialize)]
struct File {
    filename: String,
    previous_filename: Option<String>,
}

/// `GET /repos/{repository}/compare/{base}...{head}`: one page, the one with the files.
pub async fn changed_files(
    client: &Client,
    repository: &str,
    base: &str,
    head: &str,
) -> Result<ChangedFiles, GithubError> {
    let url = format!("/repos/{repository}/compare/{base}...{head}?per_page={PER_PAGE}");
    let reply = client
        .request(Method::GET, &url, None, As::Installation)
        .await?;
    let page: Comparison = serde_json::from_value(reply.body)
        .map_err(|e| GithubError::Decode(format!("comparison: {e}")))?;
    let listed = page.files.len();
    let mut files = BTreeSet::new();
    for f in page.files {
        files.extend(f.previous_filename);
        files.insert(f.filename);
    }
    let status = page.status.unwrap_or_default();
    Ok(ChangedFiles {
        files: files.into_iter().collect(),
        complete: status == "ahead" && listed < MAX_COMPARE_FILES,
        status,
    })
}

/// The monorepo path filters' source of changed files (issue 12): a list GitHub cut short, or
/// a comparison that is not `ahead`, is an error, so the app builds.
impl crate::push_filter::ChangedFilesSource for Client {
    fn changed_files<'a>(
        &'a self,
        repository: &'a str,
        base: &'a str,
        head: &'a str,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<Vec<String>, crate::push_filter::CompareError>>
                + Send
                + 'a,
        >,
    > {
        Box::pin(async move {
            let changed = changed_files(self, repository, base, head)
                .await
                .map_err(|e| crate::push_filter::CompareError(e.to_string()))?;
            if changed.status != "ahead" {
                return Err(crate::push_filter::CompareError(format!(
                    "the comparison is {}, not ahead: its files leave out commits the push dropped",
                    if changed.status.is_empty() {
                        "without a status"
                    } else {
                        &changed.status
                    }
                )));
            }
            if !changed.complete {
                return Err(crate::push_filter::CompareError(format!(
                    "GitHub lists at most {MAX_COMPARE_FILES} changed files; the list may be incomplete"
                )));
            }
            Ok(changed.files)
        })
    }
}
