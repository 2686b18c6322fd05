//! The status page's HTML: one function per section, top to bottom. Every value from the
//! database or the configuration passes through [`esc`]; nothing is loaded from elsewhere.

use std::fmt::Write;

use super::{Job, Queue, RUNBOOK, Status};
use crate::integrity::Finding;
use crate::integrity::history::Line;
use crate::job::{JobKind, Outcome};
use crate::words::plural;

/// The page.
pub fn html(status: &Status) -> String {
    let mut p = String::new();
    head(&mut p, status);
    not_ready(&mut p, status);
    missing(&mut p, status);
    jobs(&mut p, &status.jobs, status.last_full_scan);
    findings(&mut p, status);
    history(&mut p, &status.history);
    queue(&mut p, status.repair_queue.as_ref());
    let _ = write!(
        p,
        "<nav><a href=/metrics>/metrics</a><a href=/readyz>/readyz</a><a href=/status>/status \
         (JSON)</a><a href='{RUNBOOK}'>runbook</a></nav></main></body></html>"
    );
    p
}

fn head(p: &mut String, status: &Status) {
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
}

fn not_ready(p: &mut String, status: &Status) {
    let Some(not_ready) = &status.not_ready else {
        return;
    };
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
            "<p>Failed checks: <code>{}</code> (<code>usersync migrate verify</code> has each \
             fix)</p>",
            esc(&not_ready.checks.join(", "))
        );
    }
    p.push_str("</section>");
}

fn missing(p: &mut String, status: &Status) {
    let n = status.users_missing_profile;
    let class = if n > 0 { "error" } else { "ok" };
    let _ = write!(
        p,
        "<section><h2>Users missing a profile</h2><p><span class='big {class}'>{n}</span> \
         live {} without a profile, as last counted</p></section>",
        if n == 1 { "user" } else { "users" }
    );
}

fn jobs(p: &mut String, jobs: &[Job], last_full_scan: Option<f64>) {
    p.push_str(
        "<section><h2>Jobs</h2><table><thead><tr><th>job</th><th>last run</th><th>when</th>\
         <th>took</th><th>what it did</th></tr></thead><tbody>",
    );
    for job in jobs {
        let next = job
            .next_run
            .map(|at| format!("<br><small>next {}</small>", until(at)))
            .unwrap_or_default();
        let name = format!(
            "<td><b>{}</b><br><code>{}</code>{next}</td>",
            job.job,
            esc(&job.schedule)
        );
        match &job.last_run {
            Some(run) => {
                let _ = write!(
                    p,
                    "<tr>{name}<td class={}>{}</td><td data-label=ended>{}</td>\
                     <td data-label=took>{:.0} ms</td><td>{}</td></tr>",
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
                    "<tr>{name}<td colspan=4>{}</td></tr>",
                    not_run(job, last_full_scan)
                );
            }
        }
    }
    p.push_str("</tbody></table></section>");
}

/// The row of a job this process has not run: for the full scan, the last one any replica
/// recorded in the database.
fn not_run(job: &Job, last_full_scan: Option<f64>) -> String {
    match (job.kind, last_full_scan) {
        (JobKind::FullScan, Some(at)) => format!(
            "not run by this process; the last full scan ended {} (recorded in the database)",
            ago(at)
        ),
        (JobKind::FullScan, None) => "no full scan recorded in the database yet".into(),
        _ => "not run yet by this process".into(),
    }
}

fn findings(p: &mut String, status: &Status) {
    p.push_str("<section><h2>Integrity findings</h2>");
    let when = status.checked_at.map(ago).unwrap_or_default();
    match &status.findings {
        None => p.push_str("<p>No integrity check has run in this process yet.</p>"),
        Some(findings) if findings.is_empty() => {
            let _ = write!(
                p,
                "<p class=ok>No findings as of the last check, {when}.</p>"
            );
        }
        Some(findings) => {
            let _ = write!(
                p,
                "<p>{} as of the last check, {when}.</p><table><thead><tr><th>check</th>\
                 <th>level</th><th>count</th><th>what</th><th>fix</th></tr></thead><tbody>",
                plural(findings.len() as u64, "finding")
            );
            for f in findings {
                let first_seen = status
                    .history
                    .iter()
                    .find(|l| l.check == f.check)
                    .and_then(|l| l.first_seen);
                finding(p, f, first_seen);
            }
            p.push_str("</tbody></table>");
        }
    }
    p.push_str("</section>");
}

fn finding(p: &mut String, f: &Finding, first_seen: Option<f64>) {
    let level = f.level.as_str();
    let since = first_seen
        .map(|at| format!("<br><small>first seen {}</small>", ago(at)))
        .unwrap_or_default();
    let samples = if f.samples.is_empty() {
        String::new()
    } else {
        format!("<br>users: <code>{}</code>", esc(&f.samples.join(", ")))
    };
    let _ = write!(
        p,
        "<tr><td><b>{}</b>{since}</td><td class={level}>{level}</td><td data-label=affected>{}</td>\
         <td>{}<br><small>{}</small>{samples}</td><td>{}: <code>{}</code></td></tr>",
        esc(&f.check),
        f.count,
        esc(&f.title),
        esc(&f.detail),
        f.fix_kind.label(),
        esc(&f.fix)
    );
}

/// Each check that found something in the last seven days, as a step line drawn inline (no
/// external asset: the page's CSP stays `default-src 'none'`).
fn history(p: &mut String, lines: &[Line]) {
    p.push_str("<section><h2>The last 7 days</h2>");
    if lines.is_empty() {
        p.push_str("<p class=ok>No check found anything in the last 7 days.</p></section>");
        return;
    }
    let now = crate::metrics::now();
    for line in lines {
        let since = line
            .first_seen
            .map(|at| format!(", now since {}", ago(at)))
            .unwrap_or_else(|| ", now clear".into());
        let _ = write!(
            p,
            "<div class=line><b>{}</b> <small>up to {}{since}</small><br>{}</div>",
            esc(line.check),
            line.points.iter().map(|p| p.1).max().unwrap_or(0),
            sparkline(line, now)
        );
    }
    p.push_str("</section>");
}

const WEEK: f64 = 7.0 * 86_400.0;

/// A 7-day step line of one check's value, ending now.
fn sparkline(line: &Line, now: f64) -> String {
    let (w, h) = (336.0, 40.0);
    let start = now - WEEK;
    let max = line.points.iter().map(|p| p.1).max().unwrap_or(0).max(1) as f64;
    let x = |t: f64| ((t - start).clamp(0.0, WEEK) / WEEK * w).round();
    let y = |v: i64| (h - 2.0 - v as f64 / max * (h - 6.0)).round();
    let mut d = String::new();
    for (i, &(at, value)) in line.points.iter().enumerate() {
        if i == 0 {
            let _ = write!(d, "M{} {}", x(at), y(value));
        } else {
            let _ = write!(d, "H{}V{}", x(at), y(value));
        }
    }
    let _ = write!(d, "H{w}");
    format!(
        "<svg viewBox='0 0 {w} {h}' width={w} height={h} role=img aria-label='{} over the last \
         7 days'><rect width={w} height={h} fill='#f6f8fa'/><path d='{d}' fill=none \
         stroke='#cf222e' stroke-width=2/></svg>",
        esc(line.check)
    )
}

fn queue(p: &mut String, queue: Option<&Queue>) {
    p.push_str("<section><h2>Repair queue</h2>");
    match queue {
        None => p.push_str(
            "<p class=warning>Not read: the database did not answer in time, or the \
             connections the page may use were busy.</p>",
        ),
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
}

/// HTML-escaped text.
pub(super) fn esc(text: &str) -> String {
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
    format!("{} ago", duration(secs))
}

/// "in 3 min", to a unix time.
fn until(at: f64) -> String {
    let secs = (at - crate::metrics::now()).max(0.0).ceil() as u64;
    format!("in {}", duration(secs))
}

fn duration(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min", secs / 60),
        3600..=86_399 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ => format!(
            "{} {} h",
            plural(secs / 86_400, "day"),
            secs % 86_400 / 3600
        ),
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
.big{font-size:28px;font-weight:700}nav a{margin-right:14px}.line{margin:6px 0}svg{max-width:100%;height:auto}
@media(max-width:600px){td,th{display:block;border:none;padding:2px 0}tr{display:block;border-top:1px solid #eaeef2;padding:6px 0}thead{display:none}
td[data-label]::before{content:attr(data-label) ': ';color:#57606a}}";

fn outcome_class(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Success => "ok",
        Outcome::Skipped | Outcome::Busy => "warning",
        Outcome::Failed | Outcome::Error => "error",
    }
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
        assert_eq!(super::duration(86_400 + 7200), "1 day 2 h");
        assert_eq!(super::ago(crate::metrics::now() - 125.0), "2 min ago");
    }

    #[test]
    fn a_full_scan_another_replica_ran_is_not_reported_as_missing() {
        use super::{Job, JobKind, not_run};
        let job = |kind: JobKind| Job {
            kind,
            job: kind.name(),
            schedule: String::new(),
            next_run: None,
            last_run: None,
        };
        let an_hour_ago = crate::metrics::now() - 3600.0;
        let scan = not_run(&job(JobKind::FullScan), Some(an_hour_ago));
        assert!(scan.contains("ended 1 h 0 min ago"), "{scan}");
        assert!(not_run(&job(JobKind::FullScan), None).contains("no full scan recorded"));
        assert_eq!(
            not_run(&job(JobKind::Sweep), Some(an_hour_ago)),
            "not run yet by this process"
        );
    }
}
