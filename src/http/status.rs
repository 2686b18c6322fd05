//! The status page for on-call: `GET /` (HTML, no external assets, readable on a phone, behind
//! `kubectl port-forward` or air-gapped) and `GET /status`, its JSON twin.
//!
//! It shows the last run of each job, the current integrity findings with their fix, the repair
//! queue, users missing a profile, version and uptime, and links to `/metrics`, `/readyz` and
//! the runbook. User ids, e-mails and the database's error messages (which can quote a row)
//! appear only with the API token, sent as for the users API.

use std::fmt::Write;
use std::time::Duration;

use serde::Serialize;

use crate::daemon::Shared;
use crate::daemon::board::LastRun;
use crate::db::RowExt;
use crate::integrity::{Finding, Level};
use crate::metrics::Outcome;

/// Where the runbook lives, as the alert rules link it.
pub const RUNBOOK: &str = "https://github.com/usersync/usersync/blob/main/deploy/RUNBOOK.md";

#[derive(Serialize)]
pub struct Status {
    pub version: &'static str,
    pub uptime_secs: u64,
    pub database_up: bool,
    /// What `/readyz` says: None when ready, else why not (for `permission`, what the role
    /// lacks).
    pub not_ready: Option<super::NotReady>,
    /// Live users without a profile, as last observed by a sweep or the integrity check.
    pub users_missing_profile: i64,
    pub jobs: Vec<Job>,
    /// None before this process ran its first integrity check.
    pub findings: Option<Vec<Finding>>,
    pub checked_at: Option<f64>,
    /// None when the database did not answer in time.
    pub repair_queue: Option<Queue>,
    /// Whether ids and error messages are shown (the API token was sent).
    pub detailed: bool,
    pub runbook: &'static str,
}

#[derive(Serialize)]
pub struct Job {
    pub job: &'static str,
    pub schedule: String,
    pub last_run: Option<LastRun>,
}

#[derive(Serialize)]
pub struct Queue {
    pub depth: i64,
    /// Age of the oldest item, in seconds.
    pub oldest_secs: Option<f64>,
    /// The most common errors: SQLSTATE, how many, and (with the token) the latest message.
    pub errors: Vec<QueueError>,
}

#[derive(Serialize)]
pub struct QueueError {
    pub sqlstate: String,
    pub count: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Everything the page shows, now.
pub async fn collect(shared: &Shared, readiness: &super::Readiness, detailed: bool) -> Status {
    let board = shared.board.snapshot();
    let s = &shared.settings;
    let mut jobs = Vec::new();
    for (job, schedule) in [
        ("sweep", s.sync.schedule.clone()),
        ("repair", s.sync.repair_schedule.clone()),
        ("integrity", s.integrity.schedule.clone()),
        ("full_scan", s.sync.full_scan_schedule.clone()),
    ] {
        let mut last_run = board.jobs.get(job).cloned();
        if let Some(run) = last_run.as_mut()
            && run.outcome == Outcome::Error
            && !detailed
        {
            run.summary = "the run failed; the daemon's log has the error".into();
        }
        jobs.push(Job {
            job,
            schedule,
            last_run,
        });
    }
    let findings = board.findings.map(|findings| {
        findings
            .into_iter()
            .map(|mut f| {
                if !detailed {
                    f.samples.clear();
                    if f.check == "repair_queue_failing" {
                        f.detail =
                            "their profile cannot be created (the error: with the token)".into();
                    }
                }
                f
            })
            .collect()
    });
    let repair_queue = tokio::time::timeout(Duration::from_secs(2), queue(shared, detailed))
        .await
        .ok()
        .flatten();
    let not_ready = readiness.check(shared).await.err();
    Status {
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: (crate::metrics::now() - shared.metrics.start_time.get()).max(0.0) as u64,
        database_up: shared.metrics.database_up.get() == 1,
        not_ready,
        users_missing_profile: shared.metrics.users_missing_profile.get(),
        jobs,
        findings,
        checked_at: board.checked_at,
        repair_queue,
        detailed,
        runbook: RUNBOOK,
    }
}

/// The page's two small queries run within the API's share of the pool: however many clients
/// ask for `/`, the jobs and readiness keep their connections (no permit free: no queue shown).
async fn queue(shared: &Shared, detailed: bool) -> Option<Queue> {
    let _permit = shared.api_permits.try_acquire().ok()?;
    let client = shared.db.get_within(Duration::from_secs(1)).await.ok()?;
    let head = client
        .query_one(
            "SELECT pg_catalog.count(*),
                    EXTRACT(EPOCH FROM pg_catalog.now() - pg_catalog.min(q.first_failed_at))::float8
             FROM usersync.repair_queue q",
            &[],
        )
        .await
        .ok()?;
    let errors = client
        .query(
            "SELECT q.last_sqlstate, pg_catalog.count(*),
                    (pg_catalog.array_agg(q.last_error ORDER BY q.last_failed_at DESC))[1]
             FROM usersync.repair_queue q
             GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 3",
            &[],
        )
        .await
        .ok()?;
    let errors = errors
        .iter()
        .map(|r| {
            Some(QueueError {
                sqlstate: r.value(0).ok()?,
                count: r.value(1).ok()?,
                message: if detailed { r.value(2).ok()? } else { None },
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Queue {
        depth: head.value(0).ok()?,
        oldest_secs: head.value(1).ok()?,
        errors,
    })
}

/// HTML-escaped text.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// "3 min ago", from a unix time.
fn ago(at: f64) -> String {
    let secs = (crate::metrics::now() - at).max(0.0) as u64;
    match secs {
        0..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86_400),
    }
}

fn duration(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min", secs / 60),
        3600..=86_399 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} days {} h", secs / 86_400, secs % 86_400 / 3600),
    }
}

const STYLE: &str = "
body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}
header{background:#1b1f24;color:#fff;padding:12px 16px}header h1{font-size:18px;margin:0}
header p{margin:4px 0 0;color:#c9d1d9;font-size:13px}main{padding:8px 12px;max-width:960px;margin:auto}
section{background:#fff;border:1px solid #d8dee4;border-radius:8px;margin:12px 0;padding:10px 12px}
h2{font-size:16px;margin:0 0 8px}table{border-collapse:collapse;width:100%}
td,th{text-align:left;padding:6px 4px;border-top:1px solid #eaeef2;vertical-align:top;font-size:14px}
th{color:#57606a;font-weight:600;border-top:none}code{font:12px ui-monospace,monospace;word-break:break-all;
background:#f6f8fa;padding:2px 4px;border-radius:4px;display:inline-block}
.ok{color:#1a7f37;font-weight:600}.error{color:#cf222e;font-weight:600}.warning{color:#9a6700;font-weight:600}
.big{font-size:28px;font-weight:700}nav a{margin-right:14px}
@media(max-width:600px){td,th{display:block;border:none;padding:2px 0}tr{display:block;border-top:1px solid #eaeef2;padding:6px 0}thead{display:none}
td[data-label]::before{content:attr(data-label) ': ';color:#57606a}}";

fn outcome_class(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Success => "ok",
        Outcome::Skipped | Outcome::Busy => "warning",
        Outcome::Failed | Outcome::Error => "error",
    }
}

/// The page.
// Long on purpose: the page, top to bottom, as one template.
pub fn html(status: &Status) -> String {
    let mut p = String::new();
    let db = if status.database_up {
        "<span class=ok>database up</span>"
    } else {
        "<span class=error>database down</span>"
    };
    let _ = write!(
        p,
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content='width=device-width,initial-scale=1'>\
         <title>usersync status</title><style>{STYLE}</style></head><body>\
         <header><h1>usersync {}</h1><p>up {} · {db}</p></header><main>",
        esc(status.version),
        duration(status.uptime_secs),
    );
    if let Some(not_ready) = &status.not_ready {
        let _ = write!(
            p,
            "<section><h2>Not ready</h2><p class=error>/readyz answers 503: {}</p>",
            esc(not_ready.reason)
        );
        if !not_ready.permission.is_empty() {
            p.push_str("<p>The role usersync runs as lacks:</p><ul>");
            for what in &not_ready.permission {
                let _ = write!(p, "<li><code>{}</code></li>", esc(what));
            }
            p.push_str(
                "</ul><p>Run <code>usersync migrate grant ROLE</code> as the migration role.</p>",
            );
        }
        if !not_ready.checks.is_empty() {
            let _ = write!(
                p,
                "<p>Failed checks: <code>{}</code> (<code>usersync migrate verify</code> has \
                 each fix)</p>",
                esc(&not_ready.checks.join(", "))
            );
        }
        p.push_str("</section>");
    }
    let missing_class = if status.users_missing_profile > 0 {
        "error"
    } else {
        "ok"
    };
    let _ = write!(
        p,
        "<section><h2>Users missing a profile</h2><p><span class='big {missing_class}'>{}</span> \
         live users without a profile, as last observed</p></section>",
        status.users_missing_profile
    );

    p.push_str(
        "<section><h2>Jobs</h2><table><thead><tr><th>job</th><th>last run</th><th>when</th>\
                <th>took</th><th>what it did</th></tr></thead><tbody>",
    );
    for job in &status.jobs {
        match &job.last_run {
            Some(run) => {
                let _ = write!(
                    p,
                    "<tr><td><b>{}</b><br><code>{}</code></td><td class={}>{}</td>\
                     <td data-label=ended>{}</td><td data-label=took>{:.0} ms</td><td>{}</td></tr>",
                    job.job,
                    esc(&job.schedule),
                    outcome_class(run.outcome),
                    run.outcome.as_str(),
                    ago(run.finished_at),
                    run.duration_ms,
                    esc(&run.summary)
                );
            }
            None => {
                let _ = write!(
                    p,
                    "<tr><td><b>{}</b><br><code>{}</code></td><td colspan=4>not run yet by this \
                     process</td></tr>",
                    job.job,
                    esc(&job.schedule)
                );
            }
        }
    }
    p.push_str("</tbody></table></section>");

    p.push_str("<section><h2>Integrity findings</h2>");
    match &status.findings {
        None => p.push_str("<p>No integrity check has run in this process yet.</p>"),
        Some(findings) if findings.is_empty() => {
            let _ = write!(
                p,
                "<p class=ok>No findings ({}).</p>",
                status.checked_at.map(ago).unwrap_or_default()
            );
        }
        Some(findings) => {
            let _ = write!(
                p,
                "<p>As of the last check, {}.</p><table><thead><tr><th>check</th><th>level</th>\
                 <th>count</th><th>what</th><th>fix</th></tr></thead><tbody>",
                status.checked_at.map(ago).unwrap_or_default()
            );
            for f in findings {
                let level = match f.level {
                    Level::Error => "error",
                    Level::Warning => "warning",
                    Level::Info => "info",
                };
                let samples = if f.samples.is_empty() {
                    String::new()
                } else {
                    format!("<br>users: <code>{}</code>", esc(&f.samples.join(", ")))
                };
                let kind = match f.fix_kind {
                    crate::db::verify::FixKind::Sql => "SQL",
                    crate::db::verify::FixKind::Command => "run",
                };
                let _ = write!(
                    p,
                    "<tr><td><b>{}</b></td><td class={level}>{level}</td><td data-label=affected>{}</td>\
                     <td>{}<br><small>{}</small>{samples}</td><td>{kind}: <code>{}</code></td></tr>",
                    esc(&f.check),
                    f.count,
                    esc(&f.title),
                    esc(&f.detail),
                    esc(&f.fix)
                );
            }
            p.push_str("</tbody></table>");
        }
    }
    p.push_str("</section>");

    p.push_str("<section><h2>Repair queue</h2>");
    match &status.repair_queue {
        None => p.push_str("<p class=warning>Not read: the database did not answer in time, or the connections the page may use were busy.</p>"),
        Some(q) if q.depth == 0 => {
            p.push_str("<p class=ok>Empty: every failed sign-up is repaired.</p>")
        }
        Some(q) => {
            let _ = write!(
                p,
                "<p><span class='big error'>{}</span> waiting, the oldest for {}</p>\
                 <table><thead><tr><th>SQLSTATE</th><th>users</th><th>latest error</th></tr>\
                 </thead><tbody>",
                q.depth,
                q.oldest_secs
                    .map(|s| duration(s as u64))
                    .unwrap_or_default()
            );
            for e in &q.errors {
                let message = e
                    .message
                    .as_deref()
                    .map(esc)
                    .unwrap_or_else(|| "with the token".into());
                let _ = write!(
                    p,
                    "<tr><td><code>{}</code></td><td data-label=users>{}</td><td>{message}</td></tr>",
                    esc(&e.sqlstate),
                    e.count
                );
            }
            p.push_str("</tbody></table>");
        }
    }
    p.push_str("</section>");
    let _ = write!(
        p,
        "<nav><a href=/metrics>/metrics</a><a href=/readyz>/readyz</a><a href=/status>/status \
         (JSON)</a><a href='{RUNBOOK}'>runbook</a></nav></main></body></html>"
    );
    p
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_is_escaped_and_ages_read_as_words() {
        assert_eq!(
            super::esc("<script>alert('x')</script>&"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;"
        );
        assert_eq!(super::duration(3725), "1 h 2 min");
        assert_eq!(super::ago(crate::metrics::now() - 125.0), "2 min ago");
    }
}
