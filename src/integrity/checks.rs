//! The data checks of users and profiles, the repair queue and the policies.

use crate::db::RowExt;
use tokio_postgres::Client;

use super::{Finding, Level, Policies};
use crate::config::IntegritySettings;
use crate::error::{DbContext, Result};
use crate::finding::FixKind;
use crate::sync::plan;
use crate::sync::policy::{Policy, SoftDeleted};

const SAMPLES: i32 = 10;

/// Users without a profile (the sync's detection, past the grace period) and the lifecycle's
/// findings, from one join of the two tables; and how many profiles the sweep's lifecycle
/// statements would change.
pub async fn census(
    client: &Client,
    settings: &IntegritySettings,
    policy: &Policy,
) -> Result<(Vec<Finding>, i64)> {
    let census = plan::census(client, policy, settings.grace_period, SAMPLES).await?;
    let mut findings = Vec::new();
    lifecycle(&census, policy, &mut findings);
    let (count, samples) = census.missing;
    if count > 0 {
        findings.push(Finding {
            check: "missing_profile".into(),
            level: Level::Error,
            object: Some("public.user_profiles".into()),
            title: format!("{count} live users have no profile"),
            detail: format!(
                "live auth users older than {}s without a row in public.user_profiles: the \
                 trigger is off or failing, or they predate it",
                settings.grace_period.as_secs()
            ),
            count,
            samples,
            fix: "usersync sync (then check why the trigger missed them: usersync migrate verify)"
                .into(),
            fix_kind: FixKind::Command,
        });
    }
    Ok((findings, census.lifecycle_pending))
}

/// Profiles without a user: one anti-join of the profiles against auth.users's key.
pub async fn orphans(client: &Client) -> Result<Vec<Finding>> {
    let row = client
        .query_one(
            "SELECT count(*), COALESCE((array_agg(p.id::text))[1:$1], '{}')
             FROM public.user_profiles p
             WHERE NOT EXISTS (SELECT 1 FROM usersync.auth_users u WHERE u.id = p.id)",
            &[&SAMPLES],
        )
        .await
        .context("counting profiles without a user")?;
    let (count, samples): (i64, Vec<String>) = (row.value(0)?, row.value(1)?);
    if count == 0 {
        return Ok(Vec::new());
    }
    Ok(vec![Finding {
        check: "orphan_profile".into(),
        level: Level::Error,
        object: Some("public.user_profiles".into()),
        title: format!("{count} profiles belong to no user"),
        detail: "rows of public.user_profiles whose id is in no auth.users row: written while \
                     the foreign key was NOT VALID or its trigger off (a restore in replica mode)"
            .into(),
        count,
        samples,
        fix: "DELETE FROM public.user_profiles p WHERE NOT EXISTS \
                  (SELECT 1 FROM auth.users u WHERE u.id = p.id);"
            .into(),
        fix_kind: FixKind::Sql,
    }])
}

/// Items waiting too long, and items that keep failing.
pub async fn repair_queue(
    client: &Client,
    settings: &IntegritySettings,
    findings: &mut Vec<Finding>,
) -> Result<()> {
    let stale = settings.queue_stale_after.as_secs_f64();
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE first_failed_at < now() - make_interval(secs => $1)),
                    COALESCE((array_agg(user_id::text) FILTER (
                        WHERE first_failed_at < now() - make_interval(secs => $1)))[1:$3], '{}'),
                    count(*) FILTER (WHERE attempts >= $2),
                    COALESCE((array_agg(user_id::text) FILTER (WHERE attempts >= $2))[1:$3], '{}'),
                    (SELECT last_error FROM usersync.repair_queue WHERE attempts >= $2
                     ORDER BY last_failed_at DESC LIMIT 1)
             FROM usersync.repair_queue",
            &[&stale, &settings.queue_max_attempts, &SAMPLES],
        )
        .await
        .context("reading the repair queue")?;
    let (stale_count, stale_samples): (i64, Vec<String>) = (row.value(0)?, row.value(1)?);
    let (failing, failing_samples): (i64, Vec<String>) = (row.value(2)?, row.value(3)?);
    let last_error: Option<String> = row.value(4)?;
    if stale_count > 0 {
        findings.push(Finding {
            check: "repair_queue_stale".into(),
            level: Level::Warning,
            object: Some("usersync.repair_queue".into()),
            title: format!(
                "{stale_count} repair queue items are older than {}s",
                stale as u64
            ),
            detail: "sign-ups whose profile the trigger could not create are still waiting: the \
                     daemon is not draining the queue, or their repair keeps failing"
                .into(),
            count: stale_count,
            samples: stale_samples,
            fix: "usersync sync (it retries every queued user at once); the queue's errors: \
                  SELECT user_id, attempts, last_error FROM usersync.repair_queue \
                  ORDER BY first_failed_at;"
                .into(),
            fix_kind: FixKind::Command,
        });
    }
    if failing > 0 {
        findings.push(Finding {
            check: "repair_queue_failing".into(),
            level: Level::Error,
            object: Some("usersync.repair_queue".into()),
            title: format!(
                "{failing} users failed {} or more repair attempts",
                settings.queue_max_attempts
            ),
            detail: format!(
                "their profile cannot be created; latest error: {}",
                last_error.unwrap_or_default()
            ),
            count: failing,
            samples: failing_samples,
            fix: "fix the cause in the error (a constraint or NOT NULL column added to \
                  public.user_profiles), then usersync sync"
                .into(),
            fix_kind: FixKind::Command,
        });
    }
    Ok(())
}

/// This process's configured policies against the database's, which the triggers apply.
pub fn policy(policies: &Policies, findings: &mut Vec<Finding>) {
    let Policies {
        database,
        configured,
    } = policies;
    if configured == database {
        return;
    }
    findings.push(Finding {
        check: "policy".into(),
        level: Level::Warning,
        object: Some("usersync.policy".into()),
        title: "the configuration's lifecycle policies differ from the database's".into(),
        detail: format!(
            "the database (what the triggers and the sweep apply): {database}; this \
             configuration: {configured}"
        ),
        count: 1,
        samples: Vec::new(),
        fix: "usersync migrate up, with this configuration (it writes the policies)".into(),
        fix_kind: FixKind::Command,
    });
}

/// The profile's lifecycle: e-mails that no longer match auth.users, personal data left in the
/// profiles of soft-deleted users (and of users inserted already deleted), names and pictures
/// the metadata has and the profile lacks.
fn lifecycle(census: &plan::Census, policy: &Policy, findings: &mut Vec<Finding>) {
    let (empty, empty_samples) = census.empty_from_metadata.clone();
    if empty > 0 {
        findings.push(Finding {
            check: "empty_from_metadata".into(),
            level: Level::Warning,
            object: Some("public.user_profiles".into()),
            title: format!(
                "{} with an empty name or picture that the user's metadata has",
                crate::words::plural(empty as u64, "profile")
            ),
            detail: "sync.fill_from_metadata is on, and these were not filled: the metadata \
                     arrived while the update trigger was off or failing, or the application \
                     cleared the value after it was filled"
                .into(),
            count: empty,
            samples: empty_samples,
            fix: "usersync sync".into(),
            fix_kind: FixKind::Command,
        });
    }
    let (stale, stale_samples) = census.stale_email.clone();
    let (left, left_samples) = census.soft_deleted_left.clone();
    if stale > 0 {
        let (level, detail, fix, fix_kind) = if policy.follow_email {
            (
                Level::Error,
                "sync.follow_email is on, and these were not followed: the update trigger is off \
                 or failing",
                "usersync sync".to_string(),
                FixKind::Command,
            )
        } else {
            (
                Level::Warning,
                "sync.follow_email is off: profiles keep the e-mail they were created with",
                "set sync.follow_email = true and run usersync migrate up (profiles then follow \
                 auth.users), or leave them"
                    .to_string(),
                FixKind::Command,
            )
        };
        findings.push(Finding {
            check: "stale_email".into(),
            level,
            object: Some("public.user_profiles".into()),
            title: format!("{stale} profiles have an e-mail other than their user's"),
            detail: detail.into(),
            count: stale,
            samples: stale_samples,
            fix,
            fix_kind,
        });
    }
    if left > 0 && policy.soft_deleted != SoftDeleted::Keep {
        let what = if policy.soft_deleted == SoftDeleted::Delete {
            "still have a profile (sync.soft_deleted = delete)"
        } else {
            "still have personal data in their profile (sync.soft_deleted = scrub)"
        };
        findings.push(Finding {
            check: "soft_deleted_personal_data".into(),
            level: Level::Error,
            object: Some("public.user_profiles".into()),
            title: format!("{left} soft-deleted users {what}"),
            detail: "GoTrue blanked these users, their profiles did not follow: the update \
                     trigger is off or failing, or they were inserted already deleted"
                .into(),
            count: left,
            samples: left_samples,
            fix: "usersync sync".into(),
            fix_kind: FixKind::Command,
        });
    }
}
