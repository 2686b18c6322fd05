//! `/readyz`: the database answers, `migrate verify` holds and the role usersync runs as has
//! its privileges; else 503 with a stable reason.

use std::time::Duration;

use hyper::{Response, StatusCode};
use tokio::sync::Mutex;

use super::{Body, json};
use crate::db::verify;
use crate::state::Shared;

/// The answer of `/readyz`.
pub(super) async fn respond(shared: &Shared, readiness: &Readiness) -> Response<Body> {
    match readiness.check(shared).await {
        Ok(()) => json(StatusCode::OK, r#"{"ready":true}"#.into()),
        Err(not_ready) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({
                "ready": false,
                "reason": not_ready.reason,
                "checks": not_ready.checks,
                "permission": not_ready.permission,
                "database": shared.db.target(),
            })
            .to_string(),
        ),
    }
}

/// Readiness: the database answers and `migrate verify` holds. Remembered for two seconds, so
/// probes from several kubelets or load balancers cost one check.
#[derive(Default)]
pub struct Readiness {
    last: Mutex<Option<(std::time::Instant, Result<(), NotReady>)>>,
}

/// Why `/readyz` says 503: a stable reason code, for `schema` the failed checks, for
/// `permission` what the role lacks. Never the server's own messages (they can name the user
/// and the authentication method): the log has those.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct NotReady {
    /// `unreachable`: no connection could be opened; `busy`: every pooled connection stayed in
    /// use; `timeout`: the database did not answer in time; `schema`: `migrate verify` fails;
    /// `permission`: the role usersync runs as lacks a privilege (`migrate grant`); `error`: a
    /// statement failed otherwise.
    pub reason: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<String>,
    /// With `permission`: each privilege or object, as `SELECT ON TABLE usersync.auth_users`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub permission: Vec<String>,
}

impl NotReady {
    fn because(reason: &'static str) -> NotReady {
        NotReady {
            reason,
            checks: Vec::new(),
            permission: Vec::new(),
        }
    }
}

/// The checks whose failure means a missing privilege rather than a broken schema.
const PERMISSION_CHECKS: [&str; 2] = ["runtime_grants", "auth_view"];

impl Readiness {
    pub async fn check(&self, shared: &Shared) -> Result<(), NotReady> {
        let mut last = self.last.lock().await;
        if let Some((at, result)) = last.as_ref()
            && at.elapsed() < Duration::from_secs(2)
        {
            return result.clone();
        }
        let limit = shared.settings.http.readiness_timeout;
        let result = match tokio::time::timeout(limit, probe(shared, limit)).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(
                    timeout_secs = limit.as_secs(),
                    "readiness: the database did not answer in time"
                );
                Err(NotReady::because("timeout"))
            }
        };
        if let Err(reason) = &result {
            tracing::info!(reason = reason.reason, checks = ?reason.checks, "not ready");
        }
        *last = Some((std::time::Instant::now(), result.clone()));
        result
    }
}

async fn probe(shared: &Shared, limit: Duration) -> Result<(), NotReady> {
    let not_ready = |reason: &'static str, e: &crate::Error| {
        tracing::warn!(error = %crate::error::Chain(e), reason, "readiness check failed");
        NotReady::because(reason)
    };
    let client = shared.db.get_within(limit).await.map_err(|e| match &e {
        crate::Error::Busy { .. } => not_ready("busy", &e),
        _ => {
            shared.database_down();
            not_ready("unreachable", &e)
        }
    })?;
    let report = verify::verify(&client).await.map_err(|e| {
        if e.is_timeout() {
            not_ready("timeout", &e)
        } else if e.is_unreachable() {
            not_ready("unreachable", &e)
        } else if let Some(object) = e.permission_denied() {
            NotReady {
                permission: vec![object],
                ..not_ready("permission", &e)
            }
        } else {
            not_ready("error", &e)
        }
    })?;
    if report.ok {
        return Ok(());
    }
    let checks: Vec<String> = report
        .findings
        .iter()
        .filter(|f| f.level == verify::Level::Error)
        .map(|f| f.check.clone())
        .collect();
    if !checks
        .iter()
        .all(|c| PERMISSION_CHECKS.contains(&c.as_str()))
    {
        return Err(NotReady {
            checks,
            ..NotReady::because("schema")
        });
    }
    let mut permission: Vec<String> = verify::runtime::standings(&client, None)
        .await
        .map_err(|e| not_ready("error", &e))?
        .iter()
        .filter(|s| s.present && !s.held)
        .map(|s| s.privilege.describe())
        .collect();
    if checks.iter().any(|c| c == "auth_view") {
        permission.push("rows of usersync.auth_users (its owner cannot see auth.users)".into());
    }
    Err(NotReady {
        checks,
        permission,
        ..NotReady::because("permission")
    })
}
