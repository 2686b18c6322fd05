//! The verdicts of `sync::watch`, on readings made up.

use super::*;

fn reading() -> Reading {
    Reading {
        server_started: "2026-11-30 06:00:00+00".into(),
        database: 5,
        users_table: 16400,
        users_file: 16400,
        profiles_table: 16500,
        profiles_file: 16500,
        stats_reset: None,
        catalog: "abc".into(),
        users_inserted: 1000,
        users_deleted: 10,
        profiles_deleted: 20,
        journaled: 1030,
        track_counts: true,
    }
}

#[test]
fn changes_the_triggers_journaled_are_quiet_and_others_are_unseen() {
    let base = reading();
    assert_eq!(
        verdict(None, &base).map(|d| d.reason),
        Some(Reason::NoBaseline)
    );
    assert_eq!(verdict(Some(&base), &base), None);
    let through_triggers = Reading {
        users_inserted: 1500,
        profiles_deleted: 25,
        journaled: 1535,
        ..base.clone()
    };
    assert_eq!(verdict(Some(&base), &through_triggers), None);
    // The journal flushed before the table: not yet a verdict either way.
    let halfway = Reading {
        journaled: 1040,
        ..base.clone()
    };
    assert_eq!(verdict(Some(&base), &halfway), None);
    let around = Reading {
        users_inserted: 1003,
        ..base.clone()
    };
    assert_eq!(
        verdict(Some(&base), &around),
        Some(Due {
            reason: Reason::UnseenChanges,
            unseen: 3
        })
    );
}

#[test]
fn what_the_counters_cannot_vouch_for_is_a_full_scan_and_says_why() {
    let base = reading();
    let reason = |now: &Reading| verdict(Some(&base), now).map(|d| d.reason);
    let cases: [(Reading, Reason); 6] = [
        (
            Reading {
                server_started: "later".into(),
                ..base.clone()
            },
            Reason::ServerRestarted,
        ),
        (
            Reading {
                profiles_file: 1,
                ..base.clone()
            },
            Reason::TableRewritten,
        ),
        (
            Reading {
                stats_reset: Some("now".into()),
                ..base.clone()
            },
            Reason::StatisticsReset,
        ),
        (
            Reading {
                users_inserted: 0,
                users_deleted: 0,
                profiles_deleted: 0,
                journaled: 0,
                ..base.clone()
            },
            Reason::StatisticsReset,
        ),
        (
            Reading {
                catalog: "abd".into(),
                ..base.clone()
            },
            Reason::CatalogChanged,
        ),
        (
            Reading {
                track_counts: false,
                ..base.clone()
            },
            Reason::NoStatistics,
        ),
    ];
    for (now, expected) in cases {
        assert_eq!(reason(&now), Some(expected));
    }
}
