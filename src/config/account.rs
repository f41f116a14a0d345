//! `[[app]] role_arn` and `external_id` (issue 27, item 3): an app whose service runs in
//! another AWS account.
//!
//! ```toml
//! [[app]]
//! name = "web-prod"
//! promote_from = "web"
//! role_arn = "arn:aws:iam::222222222222:role/slipway-deploy"  # every ECS and ECR call of this app
//! external_id = "slipway-7f3a"                                # optional: the trust policy's sts:ExternalId
//! ```
//!
//! The formats are those of the IAM and STS references: a role ARN is
//! `arn:<partition>:iam::<12-digit account>:role/<path/><name>`, its name 1 to 64 of
//! `[A-Za-z0-9+=,.@_-]`; AssumeRole's `ExternalId` is 2 to 1224 of `[A-Za-z0-9+=,.@:/_-]`
//! (<https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRole.html>).

use super::{invalid, ConfigError};

/// The role an app's ECS and ECR calls are made as.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccountRole {
    /// `arn:aws:iam::222222222222:role/slipway-deploy`.
    pub arn: String,
    /// The account the role is in (the ARN's fifth field).
    pub account: String,
    /// AssumeRole's `ExternalId`, when the role's trust policy asks for one. Not a secret
    /// (AWS: it guards against the confused deputy, it is not a password), so it may sit in
    /// the config file.
    pub external_id: Option<String>,
}

impl AccountRole {
    /// The partition the role is in (`aws`, `aws-cn`, `aws-us-gov`).
    pub fn partition(&self) -> &str {
        self.arn.split(':').nth(1).unwrap_or("aws")
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "+=,.@_-".contains(c)
}

/// `role_arn` and `external_id` as written (keys named by `key`).
pub(super) fn validate(
    key: &dyn Fn(&str) -> String,
    role_arn: Option<String>,
    external_id: Option<String>,
) -> Result<Option<AccountRole>, ConfigError> {
    let Some(arn) = role_arn else {
        if external_id.is_some() {
            return Err(invalid(
                key("external_id"),
                "is set but `role_arn` is not: an external id goes with the role it is for",
            ));
        }
        return Ok(None);
    };
    let bad = || {
        invalid(
            key("role_arn"),
            format!(
                "\"{arn}\" is not an IAM role ARN (arn:aws:iam::<12-digit account>:role/<name>)"
            ),
        )
    };
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [prefix, partition, service, region, account, resource] = parts[..] else {
        return Err(bad());
    };
    // `role/<path/><name>`: the path is printable ASCII (IAM's `Path`:
    // `(\u002F)|(\u002F[\u0021-\u007E]+\u002F)`).
    let name = resource
        .strip_prefix("role/")
        .map(|r| r.rsplit('/').next().unwrap_or(r));
    let partition_ok = partition == "aws"
        || partition.strip_prefix("aws-").is_some_and(|p| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
        });
    let ok = prefix == "arn"
        && partition_ok
        && service == "iam"
        && region.is_empty()
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && name.is_some_and(|n| (1..=64).contains(&n.len()) && n.chars().all(is_name_char))
        && resource
            .strip_prefix("role/")
            .is_some_and(|r| r.bytes().all(|b| (0x21..=0x7e).contains(&b)));
    if !ok {
        return Err(bad());
    }
    let external_id = match external_id {
        None => None,
        Some(id) => {
            let ok = (2..=1224).contains(&id.len())
                && id.chars().all(|c| is_name_char(c) || c == ':' || c == '/');
            if !ok {
                // Not a secret (see AccountRole), but not echoed either: it may be long.
                return Err(invalid(
                    key("external_id"),
                    "must be 2 to 1224 characters of letters, digits and +=,.@:/_-",
                ));
            }
            Some(id)
        }
    };
    Ok(Some(AccountRole {
        account: account.to_owned(),
        arn,
        external_id,
    }))
}

/// One role, one external id: two apps naming the same `role_arn` must give it the same
/// `external_id` (its trust policy has one). `apps`: (name, role) in the file's order.
pub(super) fn check_shared_roles(
    apps: &[(crate::ids::AppName, Option<AccountRole>)],
) -> Result<(), ConfigError> {
    for (i, (name, role)) in apps.iter().enumerate() {
        let Some(role) = role else { continue };
        let earlier = apps[..i]
            .iter()
            .find_map(|(n, r)| r.as_ref().filter(|r| r.arn == role.arn).map(|r| (n, r)));
        if let Some((other, first)) = earlier {
            if first.external_id != role.external_id {
                return Err(invalid(
                    format!("app[{i}] ({name}).external_id"),
                    format!(
                        "differs from {other}'s, for the same role_arn: a role is assumed with \
                         one external id (its trust policy's)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(arn: Option<&str>, id: Option<&str>) -> Result<Option<AccountRole>, String> {
        let key = |f: &str| format!("app[0] (web).{f}");
        validate(&key, arn.map(str::to_owned), id.map(str::to_owned)).map_err(|e| e.to_string())
    }

    #[test]
    fn a_role_arn_names_its_account_and_an_external_id_needs_a_role() {
        assert!(check(Some("arn:aws-iso-b:iam::222222222222:role/x"), None).is_ok());
        assert!(check(Some("arn:aws:iam::222222222222:role/team~a/x"), None).is_ok());
        let role = check(
            Some("arn:aws:iam::222222222222:role/deploy/slipway-deploy"),
            Some("slipway-7f3a"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(role.account, "222222222222");
        assert_eq!(role.partition(), "aws");
        assert_eq!(role.external_id.as_deref(), Some("slipway-7f3a"));
        assert_eq!(check(None, None).unwrap(), None);
        assert_eq!(
            check(None, Some("slipway-7f3a")).unwrap_err(),
            "config: app[0] (web).external_id: is set but `role_arn` is not: an external id \
             goes with the role it is for"
        );
    }

    #[test]
    fn one_role_is_assumed_with_one_external_id() {
        let role = |id: &str| {
            check(Some("arn:aws:iam::222222222222:role/x"), Some(id))
                .unwrap()
                .unwrap()
        };
        let name = |n: &str| crate::ids::AppName::parse(n).unwrap();
        let same = [
            (name("web"), None),
            (name("prod"), Some(role("id-one"))),
            (name("api-prod"), Some(role("id-one"))),
        ];
        assert!(check_shared_roles(&same).is_ok());
        let differ = [
            (name("prod"), Some(role("id-one"))),
            (name("api-prod"), Some(role("id-two"))),
        ];
        assert_eq!(
            check_shared_roles(&differ).unwrap_err().to_string(),
            "config: app[1] (api-prod).external_id: differs from prod's, for the same \
             role_arn: a role is assumed with one external id (its trust policy's)"
        );
    }

    #[test]
    fn what_is_not_a_role_arn_or_an_external_id_is_refused_by_key() {
        for arn in [
            "",
            "arn:aws:iam::22222222222:role/x",
            "arn:aws:iam::222222222222:user/x",
            "arn:aws:iam:eu-west-1:222222222222:role/x",
            "arn:aws:sts::222222222222:role/x",
            "arn:aws:iam::222222222222:role/",
            "arn:aws:iam::222222222222:role/has space",
            "arn:aws:iam::222222222222:role/path/has space",
            "arn:azure:iam::222222222222:role/x",
            "222222222222",
        ] {
            let err = check(Some(arn), None).unwrap_err();
            assert_eq!(
                err,
                format!(
                    "config: app[0] (web).role_arn: \"{arn}\" is not an IAM role ARN \
                     (arn:aws:iam::<12-digit account>:role/<name>)"
                )
            );
        }
        for id in ["x", "has space", &"a".repeat(1225)] {
            let err = check(Some("arn:aws:iam::222222222222:role/x"), Some(id)).unwrap_err();
            assert_eq!(
                err,
                "config: app[0] (web).external_id: must be 2 to 1224 characters of letters, \
                 digits and +=,.@:/_-"
            );
        }
    }
}
