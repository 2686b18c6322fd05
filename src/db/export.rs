//! `usersync migrate export --supabase DIR`: usersync's migrations as Supabase CLI migration
//! files, for teams whose schema ships through `supabase/migrations` and `supabase db push`.
//!
//! One file per migration, `<14-digit UTC timestamp>_usersync_<name>.sql`: the up file as it is
//! built into this binary, then its row in `usersync.schema_migrations` with its checksum, so that
//! once applied `usersync migrate status` shows it applied and `migrate up` has nothing to do.
//! A second export writes only the migrations the folder lacks, timestamped after every file
//! already there (the CLI applies files in name order, and a file older than the last one
//! applied would be skipped). A usersync file of the folder that no longer carries its
//! migration's checksum, or a later migration present with an earlier one missing, stops the
//! export, changing nothing.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::migrate::{MIGRATIONS, Migration};
use crate::error::{Error, IoContext, Result};

/// What one export did.
#[derive(Clone, Debug, Serialize)]
pub struct Exported {
    /// Files written now, in order.
    pub written: Vec<PathBuf>,
    /// usersync's files the folder already had.
    pub present: Vec<PathBuf>,
}

/// A file's name in a Supabase migrations folder: its timestamp, then the rest.
fn timestamp_of(name: &str) -> Option<u64> {
    let (stamp, _) = name.split_once('_')?;
    (stamp.len() == 14 && stamp.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stamp.parse().ok())
        .flatten()
}

fn suffix(m: &Migration) -> String {
    format!("_usersync_{}.sql", m.name)
}

/// The file's text: the up SQL, pinned to the catalog's search path for the transaction the
/// CLI (or `psql -1`) runs it in, and its history row.
pub fn contents(m: &Migration) -> String {
    format!(
        "-- usersync migration {version:04}_{name}, exported by usersync {release} for the \
         Supabase CLI\n\
         -- (usersync migrate export --supabase). Do not edit: its checksum below is what\n\
         -- usersync migrate status compares with migrations/{version:04}_{name}.up.sql.\n\
         SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);\n\n\
         {up}\n\
         INSERT INTO usersync.schema_migrations (version, name, checksum)\n\
         VALUES ({version}, '{name}', '{checksum}');\n",
        version = m.version,
        name = m.name,
        release = env!("CARGO_PKG_VERSION"),
        up = m.up.trim_end(),
        checksum = m.checksum(),
    )
}

/// Writes the migrations `dir` lacks; `now` is the UTC time the first new file is named after.
pub fn supabase(dir: &Path, now: chrono::DateTime<chrono::Utc>) -> Result<Exported> {
    std::fs::create_dir_all(dir).io_context(format!("creating {}", dir.display()))?;
    let mut names: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(dir).io_context(format!("reading {}", dir.display()))? {
        let entry = entry.io_context(format!("reading {}", dir.display()))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    let mut present = Vec::new();
    let mut missing: Vec<&Migration> = Vec::new();
    for m in MIGRATIONS {
        let found = names
            .iter()
            .find(|n| timestamp_of(n).is_some() && n.ends_with(&suffix(m)));
        match found {
            Some(name) => {
                let path = dir.join(name);
                let text = std::fs::read_to_string(&path)
                    .io_context(format!("reading {}", path.display()))?;
                if !text.contains(&m.checksum()) {
                    return Err(Error::Migration(format!(
                        "{} is not usersync's migration {:04}_{} (its checksum differs): \
                         restore it, or delete it before exporting",
                        path.display(),
                        m.version,
                        m.name
                    )));
                }
                if let Some(gap) = missing.first() {
                    return Err(Error::Migration(format!(
                        "{} is in {} but migration {:04}_{} before it is not: restore that \
                         file rather than export it after its successor",
                        name,
                        dir.display(),
                        gap.version,
                        gap.name
                    )));
                }
                present.push(path);
            }
            None => missing.push(m),
        }
    }
    let latest = names.iter().filter_map(|n| timestamp_of(n)).max();
    let mut stamp = now
        .format("%Y%m%d%H%M%S")
        .to_string()
        .parse::<u64>()
        .expect("14 digits");
    if let Some(latest) = latest {
        stamp = stamp.max(latest + 1);
    }
    let mut written = Vec::new();
    for m in missing {
        let path = dir.join(format!("{stamp:014}{}", suffix(m)));
        std::fs::write(&path, contents(m)).io_context(format!("writing {}", path.display()))?;
        written.push(path);
        stamp = next_second(stamp);
    }
    Ok(Exported { written, present })
}

/// The timestamp one second later, as a calendar would count it.
fn next_second(stamp: u64) -> u64 {
    let parsed = chrono::NaiveDateTime::parse_from_str(&format!("{stamp:014}"), "%Y%m%d%H%M%S");
    match parsed {
        Ok(t) => (t + chrono::TimeDelta::seconds(1))
            .format("%Y%m%d%H%M%S")
            .to_string()
            .parse()
            .expect("14 digits"),
        // A folder's own odd name (not a date): count on from it.
        Err(_) => stamp + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_follow_the_folder_and_the_calendar() {
        assert_eq!(
            timestamp_of("20261202101500_usersync_watch.sql"),
            Some(20261202101500)
        );
        assert_eq!(timestamp_of("2026_x.sql"), None);
        assert_eq!(next_second(20261231235959), 20270101000000);
        let text = contents(&MIGRATIONS[0]);
        assert!(text.contains(&MIGRATIONS[0].checksum()));
        assert!(text.contains("INSERT INTO usersync.schema_migrations (version, name, checksum)"));
    }
}
