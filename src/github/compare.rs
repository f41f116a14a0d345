//! The files changed between two commits, from GitHub's compare API (for the monorepo path
//! filters: an app builds only when a push touches its paths).

use std::collections::BTreeSet;

use reqwest::Method;
use serde::Deserialize;

use super::client::{As, Client};
use super::GithubError;

/// GitHub lists at most this many files for a comparison, whatever the page.
pub const MAX_COMPARE_FILES: usize = 300;
const PER_PAGE: u32 = 100;
/// Pages of commits walked; the files come with the first, later pages rarely add any.
const MAX_PAGES: usize = 10;

/// The changed paths, sorted. Renames list both the old and the new path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedFiles {
    pub files: Vec<String>,
    /// False when GitHub's list was cut at [`MAX_COMPARE_FILES`] (or the pages ran out): the
    /// caller must then assume any path may have changed.
    pub complete: bool,
}

#[derive(Deserialize)]
struct Comparison {
    #[serde(default)]
    files: Vec<File>,
}

#[derive(Deserialize)]
struct File {
    filename: String,
    previous_filename: Option<String>,
}

/// `GET /repos/{repository}/compare/{base}...{head}`, following its pages.
pub async fn changed_files(
    client: &Client,
    repository: &str,
    base: &str,
    head: &str,
) -> Result<ChangedFiles, GithubError> {
    let mut files = BTreeSet::new();
    let mut listed = 0;
    let mut next = Some(format!(
        "/repos/{repository}/compare/{base}...{head}?per_page={PER_PAGE}"
    ));
    let mut pages = 0;
    let mut complete = true;
    while let Some(url) = next.take() {
        pages += 1;
        let reply = client
            .request(Method::GET, &url, None, As::Installation)
            .await?;
        let page: Comparison = serde_json::from_value(reply.body)
            .map_err(|e| GithubError::Decode(format!("comparison: {e}")))?;
        listed = listed.max(page.files.len());
        for f in page.files {
            files.extend(f.previous_filename);
            files.insert(f.filename);
        }
        match reply.next {
            Some(url) if pages < MAX_PAGES => next = Some(url),
            Some(_) => complete = false,
            None => {}
        }
    }
    Ok(ChangedFiles {
        files: files.into_iter().collect(),
        complete: complete && listed < MAX_COMPARE_FILES,
    })
}

/// The monorepo path filters' source of changed files (issue 12): a list GitHub cut short is
/// an error, so the app builds.
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
            if !changed.complete {
                return Err(crate::push_filter::CompareError(format!(
                    "GitHub lists at most {MAX_COMPARE_FILES} changed files; the list may be incomplete"
                )));
            }
            Ok(changed.files)
        })
    }
}
