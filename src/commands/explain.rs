//! `usersync explain` and `usersync check --history`: answers from what the database holds.

use super::emit;
use super::render::printable;
use crate::config::Settings;
use crate::db;
use crate::error::{Error, Result, exit};
use crate::integrity::history;
use crate::sync::{self, explain};

pub(super) async fn explain_command(settings: &Settings, user: &str, json: bool) -> Result<u8> {
    let db = db::connect(&settings.database).await?;
    let client = db.get().await?;
    let policy = sync::policy::load(&client)
        .await?
        .unwrap_or(settings.sync.policy());
    let key = explain::Key::parse(user);
    let Some(explanation) = explain::explain(&**client, &key, policy).await? else {
        // An e-mail is not repeated in the message: it may land in a log.
        return Err(Error::NoSuchUser(match key {
            explain::Key::Id(id) => format!("no user {id}"),
            explain::Key::Email(_) => "no user with that e-mail".into(),
        }));
    };
    emit(json, &explanation, explain_text)?;
    Ok(explanation.exit_code() as u8)
}

pub(super) async fn history_command(
    settings: &Settings,
    since: Option<&str>,
    json: bool,
) -> Result<u8> {
    let since = match since {
        None => crate::metrics::now() - 7.0 * 86_400.0,
        Some(text) => parse_since(text, chrono::Utc::now()).ok_or_else(|| {
            Error::Usage(format!(
                "--since {text:?}: not a duration (90s, 30m, 24h, 7d) or a date \
                     (2026-11-30, or an RFC 3339 time)"
            ))
        })?,
    };
    let db = db::connect(&settings.database).await?;
    let changes = history::since(&*db.get().await?, since).await?;
    emit(json, &changes, |c| history_text(c, since))?;
    Ok(exit::OK)
}

/// One screen: the user, whether it should have a profile and why, the profile, the repair
/// queue, the triggers and policies, and what `usersync sync` would do.
fn explain_text(e: &explain::Explanation) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let u = &e.user;
    let who = u
        .email
        .as_deref()
        .or(u.phone.as_deref())
        .unwrap_or("(no e-mail or phone)");
    let _ = writeln!(out, "user {}  {}", u.id, printable(who));
    let _ = writeln!(
        out,
        "  signed up {}{}{}",
        time(u.created_at),
        if u.is_anonymous { " · anonymous" } else { "" },
        u.deleted_at
            .map(|d| format!(" · deleted {}", time(Some(d))))
            .unwrap_or_default()
    );
    let why = match e.why {
        explain::Why::Live => "yes: a live user",
        explain::Why::AnonymousExcluded => "no: anonymous, and sync.include_anonymous is off",
        explain::Why::SoftDeleted => "no: soft-deleted (GoTrue blanked it)",
        explain::Why::BornDeleted => "no: inserted already deleted (an import)",
    };
    let _ = writeln!(out, "should have a profile: {why}");
    profile_lines(&mut out, e);
    match &e.repair_queue {
        None => out.push_str(
            "repair queue: not queued
",
        ),
        Some(q) => {
            let _ = writeln!(
                out,
                "repair queue: {} failed, {} repair attempts, last SQLSTATE {} at {}, next retry {}\n  {}",
                crate::words::plural(q.failures as u64, "sign-up or repair"),
                q.attempts,
                printable(&q.last_sqlstate),
                time(Some(q.last_failed_at)),
                time(Some(q.next_attempt_at)),
                printable(&q.last_error)
            );
        }
    }
    let _ = writeln!(
        out,
        "triggers: sign-up {}, update {}, metadata {}\npolicies: {}\nlast full scan: {}",
        e.triggers.sign_up,
        e.triggers.update,
        e.triggers.metadata,
        e.policy,
        e.last_full_scan
            .map_or("none recorded".into(), |t| time(Some(t)))
    );
    if e.actions.is_empty() {
        out.push_str("usersync sync would: nothing\n");
    } else {
        let actions: Vec<String> = e.actions.iter().map(action).collect();
        let _ = writeln!(out, "usersync sync would: {}", actions.join("; "));
    }
    out
}

fn profile_lines(out: &mut String, e: &explain::Explanation) {
    use std::fmt::Write;
    let Some(p) = &e.profile else {
        out.push_str("profile: none\n");
        return;
    };
    let field = |v: &Option<String>| {
        v.as_deref()
            .map_or("-".into(), |v| printable(v).into_owned())
    };
    let _ = writeln!(
        out,
        "profile: {} (role {}): e-mail {}, name {}, picture {}",
        p.state,
        printable(&p.role),
        field(&p.email),
        field(&p.full_name),
        field(&p.avatar_url)
    );
    if p.email_behind {
        out.push_str("  its e-mail is not the user's\n");
    }
    if !p.fillable.is_empty() {
        let _ = writeln!(
            out,
            "  empty, and in the user's metadata: {}",
            p.fillable.join(", ")
        );
    }
}

fn action(a: &explain::Action) -> String {
    use explain::Action;
    match a {
        Action::CreateProfile => "create the profile".into(),
        Action::FillEmail => "fill the profile's e-mail".into(),
        Action::FollowEmail => "follow the user's new e-mail".into(),
        Action::FillFromMetadata { fields } => {
            format!("fill {} from the metadata", fields.join(" and "))
        }
        Action::Scrub => "scrub the profile's personal data".into(),
        Action::DeleteProfile => "delete the profile".into(),
        Action::Dequeue => "take the user out of the repair queue".into(),
    }
}

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or("-".into(), |t| {
        t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
    })
}

/// The changes, oldest first: when, the check, from what to what.
fn history_text(changes: &[history::Change], since: f64) -> String {
    use std::fmt::Write;
    let from = chrono::DateTime::from_timestamp(since as i64, 0).map(|t| time(Some(t)));
    let mut out = format!(
        "findings history since {}: {}\n",
        from.unwrap_or_default(),
        crate::words::plural(changes.len() as u64, "change")
    );
    for c in changes {
        let at = chrono::DateTime::from_timestamp(c.at as i64, 0);
        let _ = writeln!(
            out,
            "{}  {:<28} {} -> {}",
            time(at),
            c.check,
            c.previous,
            c.value
        );
    }
    out
}

/// `--since`: a duration back from `now`, or a date or time; as unix time.
fn parse_since(text: &str, now: chrono::DateTime<chrono::Utc>) -> Option<f64> {
    let text = text.trim();
    let unit = |c: char| match c {
        's' => Some(1),
        'm' => Some(60),
        'h' => Some(3600),
        'd' => Some(86_400),
        _ => None,
    };
    if let Some(last) = text.chars().last()
        && let Some(secs) = unit(last)
        && let Ok(n) = text[..text.len() - 1].parse::<u32>()
    {
        return Some(now.timestamp() as f64 - f64::from(n) * secs as f64);
    }
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(at.timestamp() as f64);
    }
    let day = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    Some(day.and_hms_opt(0, 0, 0)?.and_utc().timestamp() as f64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn since_takes_durations_dates_and_times() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-02T12:00:00Z")
            .unwrap()
            .to_utc();
        let at = |t: &str| super::parse_since(t, now);
        let noon = now.timestamp() as f64;
        assert_eq!(at("90s"), Some(noon - 90.0));
        assert_eq!(at("7d"), Some(noon - 7.0 * 86_400.0));
        assert_eq!(at("24h"), Some(noon - 86_400.0));
        assert_eq!(at("2026-12-01"), Some(noon - 86_400.0 - 12.0 * 3600.0));
        assert_eq!(at("2026-12-02T11:00:00Z"), Some(noon - 3600.0));
        for bad in ["", "7", "d", "-3d", "yesterday", "2026-13-01"] {
            assert_eq!(at(bad), None, "{bad}");
        }
    }
}
