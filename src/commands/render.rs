//! How each command's text output reads (its `--json` twin is the report itself).
//! Values from the database pass through [`printable`] first.

use crate::db::{migrate, verify};
use crate::{integrity, sync};

pub(super) fn user_line(u: &crate::db::users::User) -> String {
    format!(
        "{}  {:<32} {:<24} role={} active={}{}{}\n",
        u.id,
        printable(
            u.email
                .as_deref()
                .or(u.phone.as_deref())
                .unwrap_or(if u.is_anonymous { "(anonymous)" } else { "-" })
        ),
        printable(u.profile.full_name.as_deref().unwrap_or("-")),
        printable(&u.profile.role),
        u.profile.is_active,
        if u.profile_missing {
            "  PROFILE MISSING"
        } else {
            ""
        },
        if u.deleted_at.is_some() {
            "  deleted"
        } else {
            ""
        },
    )
}

pub(super) fn check_text(report: &integrity::Report) -> String {
    use integrity::Level;
    if report.findings.is_empty() {
        return format!("ok: no findings ({:.0} ms)\n", report.duration_ms);
    }
    let mut out = String::new();
    for (level, heading) in [
        (Level::Error, "ERRORS"),
        (Level::Warning, "WARNINGS"),
        (Level::Info, "INFO"),
    ] {
        let of_level: Vec<_> = report
            .findings
            .iter()
            .filter(|f| f.level == level)
            .collect();
        if of_level.is_empty() {
            continue;
        }
        out.push_str(&format!("{heading} ({})\n", of_level.len()));
        for f in of_level {
            out.push_str(&format!(
                "\n  {}: {}\n    {}\n",
                f.check,
                printable(&f.title),
                printable(&f.detail)
            ));
            if !f.samples.is_empty() {
                out.push_str(&format!("    samples: {}\n", f.samples.join(", ")));
            }
            out.push_str(&format!(
                "    {}{}\n",
                fix_label(f.fix_kind),
                printable(&f.fix)
            ));
        }
        out.push('\n');
    }
    out
}

pub(super) fn sync_text(r: &sync::Report, verbose: bool) -> String {
    let mut out = String::new();
    if r.dry_run {
        out.push_str(&format!(
            "dry run: {} users would get a profile ({} scanned, {} soft-deleted and {} anonymous skipped); nothing written\n",
            r.missing, r.scanned, r.skipped_deleted, r.skipped_anonymous
        ));
        if verbose {
            for p in &r.profiles {
                out.push_str(&format!("{p}\n"));
            }
        } else {
            for id in &r.would_create {
                out.push_str(&format!("{id}\n"));
            }
        }
        return out;
    }
    if let Some(repair) = &r.repair {
        let now = if repair.retried_now {
            " (retried every queued user now, whatever its backoff)"
        } else {
            ""
        };
        out.push_str(&format!(
            "repair queue: {} due, {} created, {} resolved, {} failed, {} remaining{now}\n",
            repair.due, repair.created, repair.resolved, repair.failed, repair.remaining
        ));
    }
    let a = &r.applied;
    out.push_str(&format!(
        "lifecycle: {} e-mails filled, {} followed; {} names or pictures filled from metadata; \
         soft-deleted users' profiles: {} scrubbed, {} deleted\n",
        a.emails_filled, a.emails_followed, a.filled_from_metadata, a.scrubbed, a.deleted
    ));
    out.push_str(&format!(
        "sweep: {} scanned, {} missing, {} created, {} raced, {} deferred, {} failed; \
         skipped {} soft-deleted, {} anonymous; {} batches (longest {:.0} ms) in {:.0} ms\n",
        r.scanned,
        r.missing,
        r.created,
        r.raced,
        r.deferred,
        r.failed,
        r.skipped_deleted,
        r.skipped_anonymous,
        r.batches,
        r.longest_batch_ms,
        r.duration_ms
    ));
    if r.ranges_busy > 0 {
        out.push_str(&format!(
            "{} of {} ranges were being swept by another process\n",
            r.ranges_busy, r.ranges
        ));
    }
    for f in &r.failures {
        out.push_str(&format!(
            "failed {}: {} (SQLSTATE {})\n",
            f.user_id,
            printable(&f.reason),
            f.sqlstate
        ));
    }
    out
}

pub(super) fn verify_text(report: &verify::Report, e2e: bool) -> String {
    let probe = if e2e { " and the sign-up probe" } else { "" };
    if report.findings.is_empty() {
        return format!("ok: {} checks{probe} passed\n", report.checks);
    }
    let mut out = if report.ok {
        format!(
            "ok: {} checks{probe} passed, with warnings\n",
            report.checks
        )
    } else {
        format!(
            "FAILED: {} of {} checks{probe}\n",
            report.findings.len(),
            report.checks
        )
    };
    for f in &report.findings {
        let warning = if f.level == verify::Level::Warning {
            " (warning)"
        } else {
            ""
        };
        out.push_str(&format!(
            "\n{}{warning}\n  expected: {}\n  found:    {}\n  {}{}\n",
            f.check,
            f.expected,
            printable(&f.found),
            fix_label(f.fix_kind),
            printable(&f.fix)
        ));
    }
    out
}

/// How a fix is introduced: SQL to run as printed, or a step.
/// `migrate up` and `migrate down`: the steps, or that there was nothing to do.
pub(super) fn steps_text(steps: &[migrate::Step], direction: migrate::Direction) -> String {
    let mut out = String::new();
    if steps.is_empty() {
        out.push_str(match direction {
            migrate::Direction::Up => "nothing to apply: the schema is up to date\n",
            migrate::Direction::Down => "nothing to roll back\n",
        });
    }
    for s in steps {
        let verb = match s.direction {
            migrate::Direction::Up => "applied",
            migrate::Direction::Down => "rolled back",
        };
        out.push_str(&format!(
            "{verb} {:04}_{} ({} ms)\n",
            s.version, s.name, s.duration_ms
        ));
    }
    out
}

/// `migrate status`: a line per migration.
pub(super) fn status_text(status: &[migrate::MigrationStatus]) -> String {
    let mut out = String::new();
    for s in status {
        let state = match &s.state {
            migrate::State::Applied {
                applied_at,
                duration_ms,
            } => format!("applied  {applied_at} ({duration_ms} ms)"),
            migrate::State::Pending => "pending".into(),
            migrate::State::Drifted { .. } => {
                "DRIFTED  the file differs from what was applied".into()
            }
            migrate::State::Unknown => "unknown  applied by a newer usersync".into(),
        };
        out.push_str(&format!("{:04}  {:<16} {state}\n", s.version, s.name));
    }
    out
}

/// `migrate grant`: the statements it ran, then either what the role may now do or each
/// privilege it still lacks, with the reason.
pub(super) fn grant_text(g: &crate::db::grant::Granted) -> String {
    let mut out = String::new();
    for sql in &g.statements {
        out.push_str(sql);
        out.push_str(";\n");
    }
    if g.statements.is_empty() {
        out.push_str(&format!(
            "{} already held every privilege usersync needs\n",
            g.role
        ));
    }
    if !g.user_id_columns.is_empty() {
        out.push_str(&format!(
            "registered for the integrity check: {}\n",
            g.user_id_columns.join(", ")
        ));
    }
    if g.complete() {
        out.push_str(&format!(
            "granted: {} may now run usersync run, sync, check and the users API\n",
            g.role
        ));
    } else {
        out.push_str(&format!("NOT COMPLETE: {} still lacks\n", g.role));
        for gap in &g.missing {
            out.push_str(&format!("  {}: {}\n", gap.what, gap.why));
        }
    }
    out
}

/// `migrate export --supabase`: what was written, what was there.
pub(super) fn export_text(e: &crate::db::export::Exported) -> String {
    let mut out = String::new();
    for path in &e.written {
        out.push_str(&format!("wrote {}\n", path.display()));
    }
    if e.written.is_empty() {
        out.push_str(&format!(
            "nothing to export: the folder has all {} of usersync's migrations\n",
            e.present.len()
        ));
    }
    out
}

pub(super) fn fix_label(kind: verify::FixKind) -> &'static str {
    match kind {
        verify::FixKind::Sql => "fix (SQL): ",
        verify::FixKind::Command => "fix (run): ",
    }
}

/// A value from the database made safe for a terminal: control characters (an escape
/// sequence in someone's name would retitle or repaint the terminal) are shown as `\u{1b}`.
pub(super) fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_from_the_database_are_shown_escaped() {
        assert_eq!(printable("Ada Lovelace"), "Ada Lovelace");
        assert_eq!(
            printable("\u{1b}]0;pwned\u{7}Ada\nEve\u{9b}"),
            "\\u{1b}]0;pwned\\u{7}Ada\\u{a}Eve\\u{9b}"
        );
    }
}
