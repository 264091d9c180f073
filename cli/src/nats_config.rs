//! `rota nats-config`: a nats-server authorization block with one user for the servers, one for
//! administrators and one for each app's workers, each allowed exactly what its role needs
//! (`rota_shared::subject::Subjects::*_permissions`).

use anyhow::Context;
use rota_shared::Subjects;
use rota_shared::subject::{Permissions, validate_token};
use rota_transport::keys::random_text;

fn quoted(items: &[String]) -> String {
    items
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn user(out: &mut String, comment: &str, name: &str, password: &str, p: &Permissions) {
    out.push_str(&format!(
        "    # {comment}\n    {{\n      user: {name:?}\n      password: {password:?}\n      permissions: {{\n        publish: {{ allow: [{}] }}\n        subscribe: {{ allow: [{}] }}\n",
        quoted(&p.publish),
        quoted(&p.subscribe)
    ));
    if p.allow_responses {
        out.push_str("        allow_responses: true\n");
    }
    out.push_str("      }\n    }\n");
}

/// The block for `apps`, with fresh random passwords.
pub fn render(subjects: &Subjects, apps: &[String]) -> anyhow::Result<String> {
    for app in apps {
        validate_token(app).with_context(|| format!("--app {app:?}"))?;
    }
    let password = || random_text(24).context("random passwords");
    let mut out = format!(
        "# nats-server authorization for Rota (prefix {:?}), made by `rota nats-config`.\n\
         # Each process logs in as its user: --nats-user NAME --nats-password PASSWORD\n\
         # (or ROTA_NATS_USER and ROTA_NATS_PASSWORD). Keep this file secret.\n\
         authorization {{\n  users = [\n",
        subjects.prefix()
    );
    user(
        &mut out,
        "Rota servers: every Rota subject, the NATS service API, JetStream, and replies.",
        "rota-server",
        &password()?,
        &subjects.server_permissions(),
    );
    user(
        &mut out,
        "Administrators (the rota CLI): admin requests, their replies, and the container upload bucket.",
        "rota-admin",
        &password()?,
        &subjects.admin_permissions(),
    );
    for app in apps {
        user(
            &mut out,
            &format!("The workers of app {app:?}: that app's subjects and container bucket only."),
            &format!("rota-worker-{app}"),
            &password()?,
            &subjects.worker_permissions(app),
        );
    }
    out.push_str("  ]\n}\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_gets_a_user() {
        let text = render(&Subjects::default(), &["billing".into(), "etl".into()]).unwrap();
        for user in [
            "rota-server",
            "rota-admin",
            "rota-worker-billing",
            "rota-worker-etl",
        ] {
            assert!(text.contains(&format!("user: {user:?}")), "{text}");
        }
        assert!(text.contains(r#""rota.app.billing.wrk.*.*""#), "{text}");
        assert!(render(&Subjects::default(), &["a.b".into()]).is_err());
        // Fresh passwords each time.
        assert_ne!(
            text,
            render(&Subjects::default(), &["billing".into(), "etl".into()]).unwrap()
        );
    }
}
