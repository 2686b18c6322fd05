//! `migrate verify --e2e`: a sign-up probe inside one transaction that is always rolled back.
//!
//! It inserts a GoTrue-shaped user and expects a profile with the defaults, deletes the user
//! and expects the profile gone, then makes profile creation fail (a `CHECK (false)` added
//! `NOT VALID` inside the transaction) and expects a second sign-up to commit anyway and land in
//! the repair queue. The rollback removes everything, including the NOTIFY, which PostgreSQL
//! only delivers on commit.
//!
//! Adding the CHECK takes an ACCESS EXCLUSIVE lock on `public.user_profiles` for the few
//! milliseconds the probe lasts; `lock_timeout` keeps the probe from queueing real sign-ups
//! behind it when the table is busy.

use crate::db::RowExt;
use tokio_postgres::{Client, Transaction};
use uuid::Uuid;

use crate::db::verify::{Finding, Report};
use crate::error::{DbContext, Error, Result, db_message, is_connection_error};
use crate::finding::{FixKind, Level};

/// What GoTrue writes for an e-mail sign-up, reduced to what a trigger can see: $1 id,
/// $2 e-mail ([`probe_email`]), $3 full name.
pub(crate) const SIGN_UP: &str = "\
INSERT INTO auth.users (
    instance_id, id, aud, role, email, encrypted_password, email_confirmed_at,
    confirmation_token, recovery_token, email_change_token_new, email_change,
    raw_app_meta_data, raw_user_meta_data, created_at, updated_at, is_sso_user, is_anonymous)
VALUES (
    '00000000-0000-0000-0000-000000000000', $1, 'authenticated', 'authenticated', $2, '',
    now(), '', '', '', '',
    '{\"provider\": \"email\", \"providers\": [\"email\"]}',
    jsonb_build_object('full_name', $3::text), now(), now(), false, false)";

pub(crate) const PROBE_NAME: &str = "usersync e2e probe";

/// Runs the probe and adds one finding per step that did not behave.
pub async fn run(client: &mut Client, report: &mut Report) -> Result<()> {
    let tx = client
        .transaction()
        .await
        .context("starting the e2e probe")?;
    tx.batch_execute("SET LOCAL lock_timeout = '2s'; SET LOCAL statement_timeout = '30s'")
        .await
        .context("starting the e2e probe")?;
    let findings = steps(&tx).await;
    // Whatever happened, nothing of the probe stays.
    let rolled_back = tx.rollback().await.context("rolling back the e2e probe");
    let findings = match findings {
        Ok(findings) => findings,
        // A statement the probe needs failed (a missing table, a busy lock): that is a finding.
        Err(Error::Db { context, source }) if !is_connection_error(&source.0) => vec![step(
            "e2e",
            "the probe runs",
            format!("{context}: {source}"),
            "fix what usersync migrate verify (without --e2e) reports, then probe again",
        )],
        Err(e) => return Err(e),
    };
    rolled_back?;
    report.checks += 3;
    report.findings.extend(findings);
    report.ok = report.passes();
    Ok(())
}

/// The probe's steps in the order they depend on each other, each with the finding it makes;
/// a sign-up that fails ends the probe.
async fn steps(tx: &Transaction<'_>) -> Result<Vec<Finding>> {
    let mut findings = Vec::new();
    let first = Uuid::new_v4();
    if let Some(failed) = sign_up(tx, first).await {
        findings.push(failed);
        return Ok(findings);
    }
    findings.extend(signed_up(tx, first).await?);
    findings.extend(deleted(tx, first).await?);
    findings.extend(failure_queued(tx).await?);
    Ok(findings)
}

/// 1. A sign-up commits: None, else the finding that it did not.
async fn sign_up(tx: &Transaction<'_>, id: Uuid) -> Option<Finding> {
    let email = probe_email(id);
    let e = tx
        .execute(SIGN_UP, &[&id, &email, &PROBE_NAME])
        .await
        .err()?;
    Some(step(
        "e2e.signup",
        "the sign-up commits",
        format!("the sign-up failed: {}", db_message(&e)),
        "usersync migrate verify (without --e2e) names the broken object",
    ))
}

/// 1. The sign-up got a profile with the defaults.
async fn signed_up(tx: &Transaction<'_>, id: Uuid) -> Result<Option<Finding>> {
    let profile = tx
        .query_opt(
            "SELECT role, is_active, full_name FROM public.user_profiles WHERE id = $1",
            &[&id],
        )
        .await
        .context("e2e probe: reading the profile")?;
    let found = match &profile {
        None => Some("no profile".to_string()),
        Some(r) => {
            let (role, active, name): (String, bool, Option<String>) =
                (r.value(0)?, r.value(1)?, r.value(2)?);
            (role != "user" || !active || name.as_deref() != Some(PROBE_NAME)).then(|| {
                format!("profile with role {role:?}, is_active {active}, full_name {name:?}")
            })
        }
    };
    Ok(found.map(|found| {
        step(
            "e2e.signup",
            "a profile with role 'user', is_active true and the name from the metadata",
            found,
            "usersync migrate verify (without --e2e) names the broken object",
        )
    }))
}

/// 2. Deleting the user deletes the profile.
async fn deleted(tx: &Transaction<'_>, id: Uuid) -> Result<Option<Finding>> {
    tx.execute("DELETE FROM auth.users WHERE id = $1", &[&id])
        .await
        .context("e2e probe: deleting the probe user")?;
    let left: i64 = tx
        .query_one(
            "SELECT count(*) FROM public.user_profiles WHERE id = $1",
            &[&id],
        )
        .await
        .context("e2e probe: reading the profile")?
        .value(0)?;
    Ok((left != 0).then(|| {
        step(
            "e2e.delete_cascade",
            "deleting the user deletes the profile",
            "the profile is still there",
            "usersync migrate verify (without --e2e) names the broken foreign key",
        )
    }))
}

/// 3. A failing profile insert does not fail the sign-up, and is queued for repair.
async fn failure_queued(tx: &Transaction<'_>) -> Result<Option<Finding>> {
    tx.batch_execute(
        "ALTER TABLE public.user_profiles ADD CONSTRAINT usersync_e2e_probe CHECK (false) NOT VALID",
    )
    .await
    .context("e2e probe: making profile creation fail (is public.user_profiles busy?)")?;
    let second = Uuid::new_v4();
    let email = probe_email(second);
    if let Err(e) = tx.execute(SIGN_UP, &[&second, &email, &PROBE_NAME]).await {
        return Ok(Some(step(
            "e2e.failure_queued",
            "the sign-up commits although its profile cannot be created",
            format!("the sign-up failed: {}", db_message(&e)),
            "usersync.on_auth_user_created() must catch every error: restore it from \
             migrations/0002_hardening.up.sql",
        )));
    }
    let queued: i64 = tx
        .query_one(
            "SELECT count(*) FROM usersync.repair_queue WHERE user_id = $1 AND last_sqlstate = '23514'",
            &[&second],
        )
        .await
        .context("e2e probe: reading the repair queue")?
        .value(0)?;
    Ok((queued != 1).then(|| {
        step(
            "e2e.failure_queued",
            "the failed profile is in usersync.repair_queue",
            "not queued",
            "restore usersync.on_auth_user_created() from migrations/0002_hardening.up.sql",
        )
    }))
}

pub(crate) fn probe_email(id: Uuid) -> String {
    // .invalid is reserved (RFC 2606): nothing can ever be sent there.
    format!("usersync-probe-{id}@probe.invalid")
}

fn step(check: &str, expected: &str, found: impl Into<String>, fix: &str) -> Finding {
    // Every probe fix is a step for a person: what went wrong is for verify to name.
    Finding {
        check: check.to_string(),
        level: Level::Error,
        expected: expected.to_string(),
        found: found.into(),
        fix: fix.to_string(),
        fix_kind: FixKind::Command,
    }
}
