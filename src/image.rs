//! Container image references, parsed properly and kept as the user wrote them.
//!
//! An image in an ECS container definition can be `name`, `name:tag`, `host/path/name:tag`,
//! `host:port/path/name:tag`, `name@sha256:<hex>`, `name:tag@sha256:<hex>`, ... Splitting on
//! `:` breaks on registry ports and digests, so the grammar is checked with
//! [`oci_spec::distribution::Reference`] and the parts are taken from the original string:
//! unlike `Reference`, [`ImageRef`] does not normalise `busybox` into
//! `docker.io/library/busybox` and does not invent a `latest` tag.

use std::fmt;
use std::str::FromStr;

use oci_spec::distribution::Reference;

/// Maximum length of a tag after its first character (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`).
const TAG_MAX_LEN: usize = 128;
/// The only digest form accepted: `sha256:` followed by 64 lowercase hex digits.
const DIGEST_PREFIX: &str = "sha256:";
const DIGEST_HEX_LEN: usize = 64;

/// Why a string is not an image reference, a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// The whole reference is malformed.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        reference: String,
        reason: InvalidReason,
    },
    /// A tag given to [`ImageRef::with_tag`] is malformed.
    #[error("invalid image tag {tag:?}: must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}")]
    InvalidTag { tag: String },
    /// A digest given to [`ImageRef::with_digest`] is malformed.
    #[error(
        "invalid image digest {digest:?}: must be \"sha256:\" followed by 64 lowercase hex digits"
    )]
    InvalidDigest { digest: String },
    /// A repository URI given to [`ImageRef::with_tag`] or [`ImageRef::with_digest`] already
    /// carries a tag or a digest, or is not a valid repository name.
    #[error("invalid repository URI {uri:?}: {reason}")]
    InvalidRepositoryUri { uri: String, reason: InvalidReason },
}

/// The specific defect found in a reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidReason {
    #[error("empty reference")]
    Empty,
    #[error("tag {0:?} must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}")]
    Tag(String),
    #[error("digest {0:?} must be \"sha256:\" followed by 64 lowercase hex digits")]
    Digest(String),
    #[error("repository {0:?} must be lowercase")]
    UppercaseRepository(String),
    #[error("a repository URI must not carry a tag or digest")]
    HasTagOrDigest,
    /// Rejected by the OCI reference grammar; the text is `oci_spec`'s explanation.
    #[error("{0}")]
    Grammar(String),
}

/// A parsed container image reference that remembers exactly what was written.
///
/// Equality and hashing are on the original string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    original: String,
    registry: Option<String>,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl ImageRef {
    /// Parses `reference`; same as `reference.parse()`.
    pub fn parse(reference: &str) -> Result<ImageRef, ImageError> {
        let invalid = |reason| ImageError::InvalidReference {
            reference: reference.to_owned(),
            reason,
        };
        if reference.is_empty() {
            return Err(invalid(InvalidReason::Empty));
        }
        let parts = split(reference);
        if let Some(digest) = parts.digest {
            if !is_valid_digest(digest) {
                return Err(invalid(InvalidReason::Digest(digest.to_owned())));
            }
        }
        if let Some(tag) = parts.tag {
            if !is_valid_tag(tag) {
                return Err(invalid(InvalidReason::Tag(tag.to_owned())));
            }
        }
        if parts.repository.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(invalid(InvalidReason::UppercaseRepository(
                parts.repository.to_owned(),
            )));
        }
        // The full grammar (registry host and port, path components, separators, length).
        Reference::from_str(reference)
            .map_err(|e| invalid(InvalidReason::Grammar(e.to_string())))?;

        Ok(ImageRef {
            original: reference.to_owned(),
            registry: parts.registry.map(str::to_owned),
            repository: parts.repository.to_owned(),
            tag: parts.tag.map(str::to_owned),
            digest: parts.digest.map(str::to_owned),
        })
    }

    /// Builds `<repository_uri>:<tag>`, e.g. from ECR's `repositoryUri` and a commit tag.
    pub fn with_tag(repository_uri: &str, tag: &str) -> Result<ImageRef, ImageError> {
        check_repository_uri(repository_uri)?;
        if !is_valid_tag(tag) {
            return Err(ImageError::InvalidTag {
                tag: tag.to_owned(),
            });
        }
        ImageRef::parse(&format!("{repository_uri}:{tag}"))
    }

    /// Builds `<repository_uri>@<digest>`; the digest must be `sha256:` + 64 lowercase hex.
    pub fn with_digest(repository_uri: &str, digest: &str) -> Result<ImageRef, ImageError> {
        check_repository_uri(repository_uri)?;
        if !is_valid_digest(digest) {
            return Err(ImageError::InvalidDigest {
                digest: digest.to_owned(),
            });
        }
        ImageRef::parse(&format!("{repository_uri}@{digest}"))
    }

    /// The registry as written (`host`, `host:port`, `localhost`), `None` when implicit
    /// (Docker Hub). `docker.io/library/x` keeps `Some("docker.io")`.
    pub fn registry(&self) -> Option<&str> {
        self.registry.as_deref()
    }

    /// The repository path without registry, tag or digest, as written (`busybox` stays
    /// `busybox`, never `library/busybox`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if one was written; no implicit `latest`.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest (`sha256:<hex>`), if one was written.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// Registry and repository as written, without tag or digest (`host:5000/a/b`).
    pub fn name(&self) -> &str {
        let end = self.original.find('@').unwrap_or(self.original.len());
        let name = &self.original[..end];
        match self.tag {
            Some(ref tag) => &name[..name.len() - tag.len() - 1],
            None => name,
        }
    }

    /// The reference exactly as written.
    pub fn as_str(&self) -> &str {
        &self.original
    }

    /// True when both name the same registry and repository, compared exactly as written:
    /// `repo` never matches `repo-two`, and `host:5000/a` differs from `host/a`.
    pub fn is_same_repository(&self, other: &ImageRef) -> bool {
        self.registry == other.registry && self.repository == other.repository
    }
}

impl FromStr for ImageRef {
    type Err = ImageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

impl TryFrom<&str> for ImageRef {
    type Error = ImageError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        ImageRef::parse(s)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

/// The pieces of a reference, located structurally (not validated).
struct Parts<'a> {
    registry: Option<&'a str>,
    repository: &'a str,
    tag: Option<&'a str>,
    digest: Option<&'a str>,
}

fn split(reference: &str) -> Parts<'_> {
    let (name_and_tag, digest) = match reference.split_once('@') {
        Some((left, digest)) => (left, Some(digest)),
        None => (reference, None),
    };
    // A ':' is a tag separator only after the last '/'; before it, it is a registry port.
    let last_slash = name_and_tag.rfind('/');
    let (name, tag) = match name_and_tag.rfind(':') {
        Some(colon) if last_slash.is_none_or(|slash| colon > slash) => {
            (&name_and_tag[..colon], Some(&name_and_tag[colon + 1..]))
        }
        _ => (name_and_tag, None),
    };
    // Docker's rule: the first component is a registry if it contains '.' or ':', is
    // `localhost`, or has uppercase letters (repository paths are lowercase).
    let (registry, repository) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    };
    Parts {
        registry,
        repository,
        tag,
        digest,
    }
}

fn check_repository_uri(uri: &str) -> Result<(), ImageError> {
    let image = ImageRef::parse(uri).map_err(|e| match e {
        ImageError::InvalidReference { reason, .. } => ImageError::InvalidRepositoryUri {
            uri: uri.to_owned(),
            reason,
        },
        other => other,
    })?;
    if image.tag.is_some() || image.digest.is_some() {
        return Err(ImageError::InvalidRepositoryUri {
            uri: uri.to_owned(),
            reason: InvalidReason::HasTagOrDigest,
        });
    }
    Ok(())
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
fn is_valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    tag.len() <= TAG_MAX_LEN
        && (first.is_ascii_alphanumeric() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `sha256:` + 64 lowercase hex digits.
fn is_valid_digest(digest: &str) -> bool {
    digest.strip_prefix(DIGEST_PREFIX).is_some_and(|hex| {
        hex.len() == DIGEST_HEX_LEN && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn digest() -> String {
        format!("sha256:{HEX}")
    }

    /// (registry, repository, tag, digest)
    type Parsed = (Option<String>, String, Option<String>, Option<String>);

    fn ok(
        registry: Option<&str>,
        repository: &str,
        tag: Option<&str>,
        digest: Option<&str>,
    ) -> Result<Parsed, InvalidReason> {
        Ok((
            registry.map(str::to_owned),
            repository.to_owned(),
            tag.map(str::to_owned),
            digest.map(str::to_owned),
        ))
    }

    fn grammar() -> Result<Parsed, InvalidReason> {
        Err(InvalidReason::Grammar("invalid reference format".into()))
    }

    #[test]
    fn reference_table() {
        let d = digest();
        let sd = Some(d.as_str());
        let long_tag = format!("a{}", "b".repeat(127));
        let too_long_tag = format!("a{}", "b".repeat(128));
        let upper_hex = format!("sha256:{}", HEX.to_uppercase());
        let cases: Vec<(String, Result<Parsed, InvalidReason>)> = vec![
            ("name".into(), ok(None, "name", None, None)),
            ("busybox".into(), ok(None, "busybox", None, None)),
            ("name:tag".into(), ok(None, "name", Some("tag"), None)),
            // Port-vs-tag ambiguity: after the last '/', ':' starts a tag.
            ("name:5000".into(), ok(None, "name", Some("5000"), None)),
            (
                "host:5000/name".into(),
                ok(Some("host:5000"), "name", None, None),
            ),
            (
                "host:5000/path/name:tag".into(),
                ok(Some("host:5000"), "path/name", Some("tag"), None),
            ),
            (
                "host:5000/a/b:5000".into(),
                ok(Some("host:5000"), "a/b", Some("5000"), None),
            ),
            (
                "localhost:5000/name".into(),
                ok(Some("localhost:5000"), "name", None, None),
            ),
            (
                "localhost/name:v1".into(),
                ok(Some("localhost"), "name", Some("v1"), None),
            ),
            // Docker's rule: a first component without '.', ':' or uppercase that is not
            // `localhost` is part of a Docker Hub repository path, not a registry.
            (
                "host/path/name:tag".into(),
                ok(None, "host/path/name", Some("tag"), None),
            ),
            ("Host/name".into(), ok(Some("Host"), "name", None, None)),
            (
                "host.example.com/path/name:tag".into(),
                ok(Some("host.example.com"), "path/name", Some("tag"), None),
            ),
            (
                "library/busybox:1.36".into(),
                ok(None, "library/busybox", Some("1.36"), None),
            ),
            (
                "docker.io/library/busybox".into(),
                ok(Some("docker.io"), "library/busybox", None, None),
            ),
            (format!("name@{d}"), ok(None, "name", None, sd)),
            (format!("name:tag@{d}"), ok(None, "name", Some("tag"), sd)),
            (
                format!("host:5000/a/b:v2@{d}"),
                ok(Some("host:5000"), "a/b", Some("v2"), sd),
            ),
            (
                "public.ecr.aws/ns/name:tag".into(),
                ok(Some("public.ecr.aws"), "ns/name", Some("tag"), None),
            ),
            (
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com/web:abc".into(),
                ok(
                    Some("123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
                    "web",
                    Some("abc"),
                    None,
                ),
            ),
            ("a/b/c/d:tag".into(), ok(None, "a/b/c/d", Some("tag"), None)),
            (
                "reg.io/a/b/c/d:tag".into(),
                ok(Some("reg.io"), "a/b/c/d", Some("tag"), None),
            ),
            (
                "my-app_x.y__z:Tag_1.0-rc".into(),
                ok(None, "my-app_x.y__z", Some("Tag_1.0-rc"), None),
            ),
            (
                format!("name:{long_tag}"),
                ok(None, "name", Some(&long_tag), None),
            ),
            // Errors.
            ("".into(), Err(InvalidReason::Empty)),
            (
                "Name:tag".into(),
                Err(InvalidReason::UppercaseRepository("Name".into())),
            ),
            (
                "host/Path/name".into(),
                Err(InvalidReason::UppercaseRepository("host/Path/name".into())),
            ),
            (
                "reg.io/Web".into(),
                Err(InvalidReason::UppercaseRepository("Web".into())),
            ),
            ("name:".into(), Err(InvalidReason::Tag("".into()))),
            ("host:5000/name:".into(), Err(InvalidReason::Tag("".into()))),
            ("name:-tag".into(), Err(InvalidReason::Tag("-tag".into()))),
            (
                format!("name:{too_long_tag}"),
                Err(InvalidReason::Tag(too_long_tag.clone())),
            ),
            (
                "name@sha256:abc".into(),
                Err(InvalidReason::Digest("sha256:abc".into())),
            ),
            (
                format!("name@{upper_hex}"),
                Err(InvalidReason::Digest(upper_hex.clone())),
            ),
            (
                format!("name@md5:{HEX}"),
                Err(InvalidReason::Digest(format!("md5:{HEX}"))),
            ),
            ("name@".into(), Err(InvalidReason::Digest("".into()))),
            (
                format!("name@{d}@{d}"),
                Err(InvalidReason::Digest(format!("{d}@{d}"))),
            ),
            ("foo::bar".into(), grammar()),
            ("name:tag:tag".into(), grammar()),
            ("host:port/name".into(), grammar()),
            ("name tag".into(), grammar()),
            (" name".into(), grammar()),
            ("/name".into(), grammar()),
            ("name/".into(), grammar()),
            ("a//b".into(), grammar()),
            (":tag".into(), grammar()),
            ("-name".into(), grammar()),
        ];
        assert!(cases.len() >= 24);
        for (input, expected) in cases {
            let got = input.parse::<ImageRef>();
            match (&got, expected) {
                (Ok(image), Ok((registry, repository, tag, digest))) => {
                    assert_eq!(
                        image.registry(),
                        registry.as_deref(),
                        "registry of {input:?}"
                    );
                    assert_eq!(image.repository(), repository, "repository of {input:?}");
                    assert_eq!(image.tag(), tag.as_deref(), "tag of {input:?}");
                    assert_eq!(image.digest(), digest.as_deref(), "digest of {input:?}");
                    assert_eq!(image.to_string(), input, "Display round-trip of {input:?}");
                    assert_eq!(image.as_str(), input);
                    assert_eq!(
                        ImageRef::try_from(image.to_string().as_str()).as_ref(),
                        Ok(image)
                    );
                }
                (Err(err), Err(reason)) => assert_eq!(
                    *err,
                    ImageError::InvalidReference {
                        reference: input.clone(),
                        reason
                    },
                    "error for {input:?}"
                ),
                (got, expected) => panic!("{input:?}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn error_message_names_the_reference() {
        let err = "foo::bar".parse::<ImageRef>().unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("invalid image reference \"foo::bar\": "),
            "{msg}"
        );
        let msg = "Web:1".parse::<ImageRef>().unwrap_err().to_string();
        assert_eq!(
            msg,
            "invalid image reference \"Web:1\": repository \"Web\" must be lowercase"
        );
    }

    #[test]
    fn port_is_not_a_tag() {
        let with_port: ImageRef = "host:5000/name".parse().unwrap();
        let with_tag: ImageRef = "name:5000".parse().unwrap();
        assert_eq!(with_port.registry(), Some("host:5000"));
        assert_eq!(with_port.tag(), None);
        assert_eq!(with_tag.registry(), None);
        assert_eq!(with_tag.tag(), Some("5000"));
        assert!(!with_port.is_same_repository(&with_tag));
        assert_eq!(with_port.name(), "host:5000/name");
        assert_eq!(with_tag.name(), "name");
    }

    #[test]
    fn same_repository_is_exact() {
        let same = |a: &str, b: &str| {
            let a: ImageRef = a.parse().unwrap();
            let b: ImageRef = b.parse().unwrap();
            assert_eq!(a.is_same_repository(&b), b.is_same_repository(&a));
            a.is_same_repository(&b)
        };
        let d = digest();
        assert!(same("repo:1", "repo:2"));
        assert!(same("repo", &format!("repo@{d}")));
        assert!(same("host:5000/a/b:1", &format!("host:5000/a/b:2@{d}")));
        assert!(!same("repo", "repo-two"));
        assert!(!same("repo:1", "repo-two:1"));
        assert!(!same("host/repo", "host/repo-two"));
        assert!(!same("host:5000/a/b", "host/a/b"));
        assert!(!same("reg.io/a/b", "reg.io/a/b/c"));
        assert!(!same("reg.io/a/b", "other.io/a/b"));
        assert!(!same("a/b", "reg.io/a/b"));
        // Kept as written: no Docker Hub normalisation.
        assert!(!same("busybox", "docker.io/library/busybox"));
    }

    #[test]
    fn name_strips_tag_and_digest() {
        let d = digest();
        for (input, name) in [
            ("name".to_owned(), "name"),
            ("name:tag".to_owned(), "name"),
            (format!("name:tag@{d}"), "name"),
            (format!("host:5000/a/b@{d}"), "host:5000/a/b"),
            ("host:5000/a/b:5000".to_owned(), "host:5000/a/b"),
        ] {
            assert_eq!(input.parse::<ImageRef>().unwrap().name(), name, "{input:?}");
        }
    }

    #[test]
    fn builds_with_tag_and_digest() {
        let uri = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/web";
        let tagged = ImageRef::with_tag(uri, "3f2a9c1").unwrap();
        assert_eq!(tagged.to_string(), format!("{uri}:3f2a9c1"));
        assert_eq!(
            tagged.registry(),
            Some("123456789012.dkr.ecr.eu-west-1.amazonaws.com")
        );
        assert_eq!(tagged.repository(), "team/web");
        assert_eq!(tagged.tag(), Some("3f2a9c1"));
        assert_eq!(tagged.digest(), None);

        let d = digest();
        let pinned = ImageRef::with_digest("localhost:5000/web", &d).unwrap();
        assert_eq!(pinned.to_string(), format!("localhost:5000/web@{d}"));
        assert_eq!(pinned.registry(), Some("localhost:5000"));
        assert_eq!(pinned.tag(), None);
        assert_eq!(pinned.digest(), Some(d.as_str()));
        assert!(pinned.is_same_repository(&"localhost:5000/web:x".parse().unwrap()));

        assert_eq!(
            ImageRef::with_tag(uri, "bad tag"),
            Err(ImageError::InvalidTag {
                tag: "bad tag".into()
            })
        );
        assert_eq!(
            ImageRef::with_tag(uri, ""),
            Err(ImageError::InvalidTag { tag: "".into() })
        );
        assert_eq!(
            ImageRef::with_tag(uri, &"x".repeat(129)),
            Err(ImageError::InvalidTag {
                tag: "x".repeat(129)
            })
        );
        assert_eq!(
            ImageRef::with_digest(uri, "sha256:abc"),
            Err(ImageError::InvalidDigest {
                digest: "sha256:abc".into()
            })
        );
        assert_eq!(
            ImageRef::with_digest(uri, HEX),
            Err(ImageError::InvalidDigest { digest: HEX.into() })
        );
        assert_eq!(
            ImageRef::with_tag("web:1", "2"),
            Err(ImageError::InvalidRepositoryUri {
                uri: "web:1".into(),
                reason: InvalidReason::HasTagOrDigest
            })
        );
        assert!(matches!(
            ImageRef::with_tag("Web", "2"),
            Err(ImageError::InvalidRepositoryUri { .. })
        ));
        assert!(matches!(
            ImageRef::with_digest("", &d),
            Err(ImageError::InvalidRepositoryUri {
                reason: InvalidReason::Empty,
                ..
            })
        ));
        let msg = ImageRef::with_tag(uri, "bad tag").unwrap_err().to_string();
        assert!(msg.contains("\"bad tag\""), "{msg}");
    }
}
