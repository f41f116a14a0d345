//! One slipway per journal: `serve` holds an exclusive `flock` on `state_dir/slipway.lock`, the
//! read-only CLI a shared one. The exclusive holder writes who it is (host, pid, ECS task,
//! start time) into the file, so whoever waits for the lock, or is refused it, can say whom.
//!
//! `flock` is released by the kernel when the process exits, however it exits, so a crashed
//! slipway never leaves the journal locked; what it wrote in the file then names a process
//! that is gone, which is why the file is only read while the lock is actually held by
//! someone else.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The lock file's name in `state_dir`.
pub const LOCK_FILE: &str = "slipway.lock";

/// How often a waiting `serve` tries the lock again.
const POLL: Duration = Duration::from_millis(250);

/// Who holds the journal: written by `serve` into the lock file once it has the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    /// The ECS task ARN, when slipway runs on ECS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// When the holder took the lock (RFC 3339).
    pub since: String,
}

impl Holder {
    /// This process, on this host, now.
    pub fn this_process(task: Option<String>) -> Holder {
        Holder {
            host: hostname(),
            pid: std::process::id(),
            task,
            since: crate::clock::format(time::OffsetDateTime::now_utc()),
        }
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "slipway pid {} on {}", self.pid, self.host)?;
        if let Some(task) = &self.task {
            write!(f, " (task {task})")?;
        }
        write!(f, ", since {}", self.since)
    }
}

/// The name of this machine (a container's hostname on ECS), or "an unknown host".
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "an unknown host".to_owned())
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Someone else holds the lock. `None`: a holder that wrote nothing (a CLI reading, or a
    /// slipway that has not written yet).
    #[error("{}", held(.0))]
    Held(Option<Holder>),
    /// Waited `waited` for the lock and gave up.
    #[error("gave up after {} s waiting for the journal lock, {}", .waited.as_secs(), held(.holder))]
    TimedOut {
        waited: Duration,
        holder: Option<Holder>,
    },
    #[error("cannot use the journal lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn held(holder: &Option<Holder>) -> String {
    match holder {
        Some(h) => format!("held by {h}"),
        None => "held by a process that did not say who it is (a `slipway` command reading \
                 the journal, or a slipway still starting)"
            .to_owned(),
    }
}

/// A held lock on a journal's `slipway.lock`: released when dropped (and by the kernel when
/// the process ends).
#[derive(Debug)]
pub struct JournalLock {
    file: File,
    path: PathBuf,
    exclusive: bool,
}

fn open_file(state_dir: &Path) -> Result<(File, PathBuf), LockError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = state_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| LockError::Io {
            path: path.clone(),
            source,
        })?;
    Ok((file, path))
}

/// Who the lock file says holds the journal (read only while someone does).
pub fn holder(state_dir: &Path) -> Option<Holder> {
    let mut text = String::new();
    File::open(state_dir.join(LOCK_FILE))
        .ok()?
        .read_to_string(&mut text)
        .ok()?;
    serde_json::from_str(text.trim()).ok()
}

impl JournalLock {
    /// Takes the exclusive lock if nobody holds the journal, and writes `me` into the file.
    /// Creates `state_dir` (owner-only) if needed.
    pub fn try_exclusive(state_dir: &Path, me: &Holder) -> Result<JournalLock, LockError> {
        super::prepare_state_dir(state_dir).map_err(|e| LockError::Io {
            path: state_dir.to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let (mut file, path) = open_file(state_dir)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(LockError::Held(holder(state_dir)))
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(LockError::Io { path, source })
            }
        }
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let text = serde_json::to_string(me).expect("a holder serializes");
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        file.write_all(b"\n").map_err(io)?;
        Ok(JournalLock {
            file,
            path,
            exclusive: true,
        })
    }

    /// Takes a shared lock (readers only): refused while `serve` holds the journal.
    pub fn try_shared(state_dir: &Path) -> Result<JournalLock, LockError> {
        let (file, path) = open_file(state_dir)?;
        match file.try_lock_shared() {
            Ok(()) => Ok(JournalLock {
                file,
                path,
                exclusive: false,
            }),
            Err(std::fs::TryLockError::WouldBlock) => Err(LockError::Held(holder(state_dir))),
            Err(std::fs::TryLockError::Error(source)) => Err(LockError::Io { path, source }),
        }
    }

    /// Takes the exclusive lock, waiting up to `wait` while someone else holds it (0: not at
    /// all). `waiting` is told whom it waits for, at once and whenever that changes, and how
    /// long it has waited, about every second.
    pub async fn wait_exclusive(
        state_dir: &Path,
        me: &Holder,
        wait: Duration,
        mut waiting: impl FnMut(Option<&Holder>, Duration),
    ) -> Result<JournalLock, LockError> {
        let started = Instant::now();
        let mut told = Instant::now() - Duration::from_secs(60);
        loop {
            match JournalLock::try_exclusive(state_dir, me) {
                Err(LockError::Held(holder)) => {
                    let waited = started.elapsed();
                    if waited >= wait {
                        return Err(LockError::TimedOut { waited, holder });
                    }
                    if told.elapsed() >= Duration::from_secs(1) {
                        waiting(holder.as_ref(), waited);
                        told = Instant::now();
                    }
                    tokio::time::sleep(POLL.min(wait - waited)).await;
                }
                other => return other,
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for JournalLock {
    fn drop(&mut self) {
        // The next holder writes its own name; until then nobody is named.
        if self.exclusive {
            let _ = self.file.set_len(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Holder {
        Holder::this_process(Some("arn:aws:ecs:eu-west-1:123456789012:task/c/abc".into()))
    }

    #[test]
    fn a_second_holder_is_told_who_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = JournalLock::try_exclusive(dir.path(), &me()).unwrap();
        match JournalLock::try_exclusive(dir.path(), &me()) {
            Err(LockError::Held(Some(h))) => assert_eq!(h, me_without_time(&h)),
            other => panic!("expected Held, got {other:?}"),
        }
        match JournalLock::try_shared(dir.path()) {
            Err(e @ LockError::Held(Some(_))) => {
                let text = e.to_string();
                assert!(text.contains("task/c/abc"), "{text}");
                assert!(
                    text.contains(&format!("pid {}", std::process::id())),
                    "{text}"
                );
            }
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        // Released: the name is gone with it, and a reader gets the lock.
        assert_eq!(holder(dir.path()), None);
        let reader = JournalLock::try_shared(dir.path()).unwrap();
        let second_reader = JournalLock::try_shared(dir.path()).unwrap();
        assert!(matches!(
            JournalLock::try_exclusive(dir.path(), &me()),
            Err(LockError::Held(None))
        ));
        drop((reader, second_reader));
        JournalLock::try_exclusive(dir.path(), &me()).unwrap();
    }

    fn me_without_time(h: &Holder) -> Holder {
        Holder {
            since: h.since.clone(),
            ..me()
        }
    }

    #[tokio::test]
    async fn waiting_gives_up_at_the_deadline_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let _first = JournalLock::try_exclusive(dir.path(), &me()).unwrap();
        let mut told = Vec::new();
        let err =
            JournalLock::wait_exclusive(dir.path(), &me(), Duration::from_millis(600), |h, _| {
                told.push(h.cloned())
            })
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                LockError::TimedOut {
                    holder: Some(_),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("gave up after"), "{err}");
        assert!(told.first().is_some_and(|h| h.is_some()), "{told:?}");
        // 0: fail at once.
        let err = JournalLock::wait_exclusive(dir.path(), &me(), Duration::ZERO, |_, _| {})
            .await
            .unwrap_err();
        assert!(matches!(err, LockError::TimedOut { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_waiter_takes_over_when_the_holder_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = JournalLock::try_exclusive(dir.path(), &me()).unwrap();
        let path = dir.path().to_owned();
        let waiter = tokio::spawn(async move {
            JournalLock::wait_exclusive(&path, &me(), Duration::from_secs(60), |_, _| {}).await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiter.is_finished());
        drop(first);
        let lock = waiter.await.unwrap().unwrap();
        assert!(holder(dir.path()).is_some());
        drop(lock);
    }
}
