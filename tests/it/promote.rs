//! Issue 27, items 1 and 2: environments and promotion. An app with `promote_from` never
//! builds; when its source app's deploy succeeds, the image that deploy ran (by digest) is
//! promoted to it through the same deploy engine, after an approval unless `approval = "auto"`.

use crate::deploy::web_with;
use crate::support::slipway::SlipwayBuilder;

/// `[[app]] web-prod`, promoted from `from`, on service `web-prod` of cluster `web` and the
/// same ECR repository as `web`; `settings`: more of its keys.
pub fn prod_app(from: &str, settings: &str) -> String {
    format!(
        "\n[[app]]\nname = \"web-prod\"\nrepository = \"octo-org/web\"\ncluster = \"web\"\n\
         service = \"web-prod\"\ncontainer = \"web\"\necr_repository = \"web\"\n\
         promote_from = \"{from}\"\n{settings}\n"
    )
}

#[test]
fn check_config_refuses_a_promotion_cycle_and_a_promote_from_naming_no_app() {
    let check = |apps: &str| {
        let b = SlipwayBuilder::new("http://127.0.0.1:9").apps(apps);
        let config = b.config_path();
        let (status, out, err) = b.run(&["check-config", "--config", config.to_str().unwrap()]);
        (status.code(), out, err)
    };
    let (code, out, err) = check(&format!("{}{}", web_with(""), prod_app("web", "")));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("ok (2 apps)"), "{out}");

    let (code, out, err) = check(&format!("{}{}", web_with(""), prod_app("web-staging", "")));
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("app[1] (web-prod).promote_from: \"web-staging\" names no app"),
        "{err}"
    );

    // web-prod ← web-qa ← web-prod: neither builds.
    let qa = prod_app("web-prod", "")
        .replace("\"web-prod\"\nrepository", "\"web-qa\"\nrepository")
        .replace("service = \"web-prod\"", "service = \"web-qa\"");
    let (code, out, err) = check(&format!("{}{}{qa}", web_with(""), prod_app("web-qa", "")));
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains(
            "app[1] (web-prod).promote_from: promotions go round in a cycle \
             (web-prod ← web-qa ← web-prod): one app of a chain must build"
        ),
        "{err}"
    );
}
