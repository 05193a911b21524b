//! `consumer delete --keep-last N --older-than AGE --incomplete [--dry-run]`: which backups a store keeps.
//!
//! The rules, each optional, decide over what `consumer list` sees ([`crate::catalog::list`]):
//! - a **complete** backup goes when every rule given lets it go: `--keep-last N` keeps the N newest complete ones,
//!   `--older-than AGE` keeps those younger than AGE (by the time their put finished); the **newest complete
//!   backup is never deleted by a rule**, whatever the rules say, so a retention job cannot leave a store with
//!   nothing to restore;
//! - an **incomplete** one (no index: a put that did not finish) goes only with `--incomplete`, and only once the
//!   put that claimed it started longer ago than [`INCOMPLETE_GRACE`] (or `--older-than`, if that is longer): a
//!   put still at work looks just like an interrupted one, so a young claim is left alone, and so is a claim that
//!   is listed but cannot be read; its claim is removed first, so that a put still at work finds it gone and
//!   fails rather than commit over removed packs;
//! - a **damaged** one (an index whose objects do not match it) is never removed by a rule: it needs someone to
//!   look at it, and `consumer delete NAME` removes it.
//!
//! [`plan`] is the decision alone (a pure function of the listing and the time); [`run`] prints it, one line per
//! backup, and carries it out unless `--dry-run`, removing each backup as `consumer delete NAME` does (index first).

use std::time::Duration;

use anyhow::{bail, Result};
use store::Store;

use crate::catalog::{self, StoredBackup};
use crate::layout;

/// How old an incomplete backup's claim must be before `--incomplete` removes it, unless `--older-than` says.
pub const INCOMPLETE_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Validated retention rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// Keep the N newest complete backups (N ≥ 1).
    pub keep_last: Option<usize>,
    /// Keep complete backups younger than this; with `incomplete`, also the age an incomplete one must reach when
    /// longer than [`INCOMPLETE_GRACE`].
    pub older_than: Option<Duration>,
    /// Remove incomplete backups (old enough, see [`INCOMPLETE_GRACE`]).
    pub incomplete: bool,
    /// Say what would go; remove nothing.
    pub dry_run: bool,
}

impl Rules {
    /// Checks the raw flags: at least one rule, `--keep-last` at least 1, `--older-than` a duration
    /// (`30d`, `12h`, `2w`, `90min`).
    pub fn from_args(
        keep_last: Option<usize>,
        older_than: Option<&str>,
        incomplete: bool,
        dry_run: bool,
    ) -> Result<Rules> {
        if keep_last == Some(0) {
            bail!("--keep-last must be at least 1 (the newest complete backup is never deleted by a rule)");
        }
        let older_than = match older_than {
            Some(text) => Some(humantime::parse_duration(text).map_err(|e| {
                anyhow::anyhow!("--older-than {text:?} is not a duration ({e}): write e.g. 30d, 12h, 2w, 90min")
            })?),
            None => None,
        };
        if keep_last.is_none() && older_than.is_none() && !incomplete {
            bail!("give a backup NAME, or at least one of --keep-last, --older-than, --incomplete");
        }
        Ok(Rules { keep_last, older_than, incomplete, dry_run })
    }
}

/// What the rules decided for one backup, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The backup's name.
    pub name: String,
    /// Whether it goes.
    pub delete: bool,
    /// Why, in words: `beyond the newest 7, older than 30days`, `the newest complete backup`.
    pub why: String,
}

/// Decides, for every backup listed, whether the rules remove it; `now` in seconds since the epoch. Pure: the
/// listing and the clock are the only inputs. Backups come out newest complete first, then the others by name.
pub fn plan(backups: &[StoredBackup], rules: &Rules, now: u64) -> Vec<Decision> {
    let age = |since: u64| Duration::from_secs(now.saturating_sub(since));
    let mut complete: Vec<&StoredBackup> = backups.iter().filter(|b| b.complete).collect();
    complete.sort_by(|a, b| b.created_unix.cmp(&a.created_unix).then_with(|| b.name.cmp(&a.name)));
    let mut decisions = Vec::with_capacity(backups.len());
    for (rank, backup) in complete.iter().enumerate() {
        let decide = |delete: bool, why: String| Decision { name: backup.name.clone(), delete, why };
        if rank == 0 {
            decisions.push(decide(false, "the newest complete backup (never deleted by a rule)".into()));
            continue;
        }
        if rules.keep_last.is_none() && rules.older_than.is_none() {
            decisions.push(decide(false, "complete (no rule for complete backups given)".into()));
            continue;
        }
        let mut kept = Vec::new();
        let mut gone = Vec::new();
        if let Some(n) = rules.keep_last {
            if rank < n {
                kept.push(format!("one of the newest {n}"));
            } else {
                gone.push(format!("beyond the newest {n}"));
            }
        }
        if let Some(limit) = rules.older_than {
            let old = age(backup.created_unix);
            if old >= limit {
                gone.push(format!("older than {} ({} old)", humantime::format_duration(limit), days(old)));
            } else {
                kept.push(format!("younger than {}", humantime::format_duration(limit)));
            }
        }
        decisions.push(match kept.is_empty() {
            true => decide(true, gone.join(", ")),
            false => decide(false, kept.join(", ")),
        });
    }
    let mut others: Vec<&StoredBackup> = backups.iter().filter(|b| !b.complete).collect();
    others.sort_by(|a, b| a.name.cmp(&b.name));
    for backup in others {
        let decide = |delete: bool, why: String| Decision { name: backup.name.clone(), delete, why };
        if let Some(damage) = &backup.damaged {
            decisions.push(decide(
                false,
                format!("DAMAGED ({damage}): left for you to look at; `consumer delete {}` removes it", backup.name),
            ));
            continue;
        }
        if !rules.incomplete {
            decisions.push(decide(false, "incomplete (--incomplete removes it)".into()));
            continue;
        }
        let grace = rules.older_than.unwrap_or(INCOMPLETE_GRACE).max(INCOMPLETE_GRACE);
        decisions.push(match &backup.claimed_by {
            Some(claim) if age(claim.started_unix) < grace => decide(
                false,
                format!(
                    "incomplete, but {} started {} ago: it may still be at work (removed once older than {})",
                    claim.describe(),
                    days(age(claim.started_unix)),
                    humantime::format_duration(grace)
                ),
            ),
            Some(claim) => decide(
                true,
                format!(
                    "incomplete: {} started {} ago and never finished",
                    claim.describe(),
                    days(age(claim.started_unix))
                ),
            ),
            None if backup.claims > 0 => decide(
                false,
                "incomplete, and its claim cannot be read: a put may still be at work (`consumer delete NAME` \
                 removes it)"
                    .into(),
            ),
            None => decide(true, "incomplete: no index and no claim (a put that did not finish)".into()),
        });
    }
    decisions
}

/// An age as a short human duration, to the hour past a day, to the minute below: `40d 13h`, `5h 12m`, `42s`.
fn days(age: Duration) -> String {
    let secs = age.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h {}m", secs / 3600, secs / 60 % 60),
        _ => format!("{}d {}h", secs / 86_400, secs / 3600 % 24),
    }
}

/// Applies `rules` to every backup in `store`: prints one line per backup (`delete`/`keep`, the name, the date,
/// why) on STDOUT, then removes those that go (nothing with `--dry-run`). A backup that fails to go is reported
/// and the others still go; the run then fails naming it.
pub fn run(store: &dyn Store, rules: &Rules) -> Result<String> {
    let backups = catalog::list(store)?;
    let decisions = plan(&backups, rules, layout::unix_now());
    let created = |name: &str| backups.iter().find(|b| b.name == name).map_or(0, |b| b.created_unix);
    let mut out = std::io::stdout().lock();
    use std::io::Write;
    let verb = if rules.dry_run { "would delete" } else { "delete" };
    for decision in &decisions {
        let action = if decision.delete { verb } else { "keep" };
        writeln!(
            out,
            "{action:<12} {:<32} {:<20} {}",
            decision.name,
            layout::date(created(&decision.name)),
            decision.why
        )?;
    }
    out.flush()?;
    let going: Vec<&Decision> = decisions.iter().filter(|d| d.delete).collect();
    if rules.dry_run {
        return Ok(format!(
            "dry run: {} of the {} backups in {} would be deleted; nothing was deleted",
            going.len(),
            decisions.len(),
            store.describe()
        ));
    }
    let mut failed = Vec::new();
    for decision in &going {
        let incomplete = backups.iter().any(|b| b.name == decision.name && !b.complete && b.damaged.is_none());
        let removed = match incomplete {
            true => catalog::delete_incomplete(store, &decision.name),
            false => catalog::delete(store, &decision.name),
        };
        match removed {
            Ok(done) => log::info!("{done}"),
            Err(e) => {
                eprintln!("consumer: error: could not delete {}: {e:#}", decision.name);
                failed.push(decision.name.as_str());
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of the {} backups to delete could not be deleted (the others were): {}",
            failed.len(),
            going.len(),
            failed.join(", ")
        );
    }
    Ok(format!("deleted {} of the {} backups in {}", going.len(), decisions.len(), store.describe()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Claim;

    const DAY: u64 = 86_400;
    const NOW: u64 = 1_800_000_000;

    fn complete(name: &str, days_old: u64) -> StoredBackup {
        StoredBackup {
            name: name.into(),
            complete: true,
            proven: true,
            damaged: None,
            claimed_by: None,
            claims: 0,
            files: 1,
            bytes: 1,
            created_unix: NOW - days_old * DAY,
            objects: 3,
        }
    }

    fn incomplete(name: &str, claimed_hours_ago: Option<u64>) -> StoredBackup {
        let claimed_by = claimed_hours_ago.map(|hours| Claim { started_unix: NOW - hours * 3600, ..Claim::new() });
        StoredBackup { complete: false, proven: false, claimed_by, created_unix: 0, ..complete(name, 0) }
    }

    fn deleted(backups: &[StoredBackup], rules: &Rules) -> Vec<String> {
        let mut names: Vec<String> =
            plan(backups, rules, NOW).into_iter().filter(|d| d.delete).map(|d| d.name).collect();
        names.sort();
        names
    }

    fn rules(keep_last: Option<usize>, older_than: Option<&str>, incomplete: bool) -> Rules {
        Rules::from_args(keep_last, older_than, incomplete, false).unwrap()
    }

    #[test]
    fn keep_last_keeps_exactly_the_newest_complete_backups() {
        let backups: Vec<StoredBackup> = (0..10).map(|d| complete(&format!("b{d}"), d)).collect();
        assert_eq!(deleted(&backups, &rules(Some(7), None, false)), ["b7", "b8", "b9"]);
        assert_eq!(deleted(&backups, &rules(Some(10), None, false)), Vec::<String>::new());
        // Order comes from the dates, not from the names.
        let shuffled = vec![complete("z", 5), complete("a", 1), complete("m", 3)];
        assert_eq!(deleted(&shuffled, &rules(Some(2), None, false)), ["z"]);
    }

    #[test]
    fn older_than_and_keep_last_must_both_let_a_backup_go() {
        let backups: Vec<StoredBackup> = (0..10).map(|d| complete(&format!("b{d}"), d * 10)).collect();
        // Ages 0, 10, …, 90 days.
        assert_eq!(deleted(&backups, &rules(None, Some("45d"), false)), ["b5", "b6", "b7", "b8", "b9"]);
        assert_eq!(deleted(&backups, &rules(Some(8), Some("45d"), false)), ["b8", "b9"]);
        assert_eq!(deleted(&backups, &rules(Some(2), Some("45d"), false)), ["b5", "b6", "b7", "b8", "b9"]);
    }

    #[test]
    fn the_newest_complete_backup_is_never_deleted_by_a_rule() {
        let backups = vec![complete("old", 400), complete("older", 500), incomplete("newer", Some(100))];
        assert_eq!(deleted(&backups, &rules(Some(1), Some("1d"), true)), ["newer", "older"]);
        let only = vec![complete("only", 1000)];
        assert!(deleted(&only, &rules(None, Some("1s"), false)).is_empty());
        assert!(Rules::from_args(Some(0), None, false, false).is_err());
    }

    #[test]
    fn incomplete_backups_go_only_when_asked_and_once_their_claim_is_old() {
        let backups = vec![
            complete("done", 1),
            incomplete("running", Some(2)),
            incomplete("stale", Some(30)),
            incomplete("orphan", None),
        ];
        assert!(deleted(&backups, &rules(Some(1), None, false)).is_empty());
        assert_eq!(deleted(&backups, &rules(None, None, true)), ["orphan", "stale"]);
        // --older-than never makes the grace shorter than a day.
        assert_eq!(deleted(&backups, &rules(None, Some("1h"), true)), ["orphan", "stale"]);
        assert_eq!(deleted(&backups, &rules(None, Some("40h"), true)), ["orphan"]);
        let mut unreadable = incomplete("unreadable", None);
        unreadable.claims = 1;
        assert!(deleted(&[unreadable], &rules(None, None, true)).is_empty());
        let why = plan(&backups, &rules(None, None, true), NOW);
        let running = why.iter().find(|d| d.name == "running").unwrap();
        assert!(running.why.contains("may still be at work"), "{}", running.why);
    }

    #[test]
    fn damaged_backups_are_never_deleted_by_a_rule_and_do_not_count_as_kept() {
        let mut damaged = complete("damaged", 0);
        (damaged.complete, damaged.damaged) = (false, Some("pack x is missing".into()));
        let backups = vec![damaged, complete("good", 5), complete("old", 50)];
        assert_eq!(deleted(&backups, &rules(Some(1), None, true)), ["old"]);
    }

    #[test]
    fn ages_read_at_a_glance() {
        assert_eq!(days(Duration::from_secs(42)), "42s");
        assert_eq!(days(Duration::from_secs(5 * 3600 + 12 * 60 + 7)), "5h 12m");
        assert_eq!(days(Duration::from_secs(40 * DAY + 13 * 3600 + 99)), "40d 13h");
    }

    #[test]
    fn bad_rules_are_refused() {
        assert!(Rules::from_args(None, None, false, true).is_err());
        let error = Rules::from_args(None, Some("thirty days"), false, false).unwrap_err().to_string();
        assert!(error.contains("--older-than"), "{error}");
        assert_eq!(rules(None, Some("2w"), false).older_than, Some(Duration::from_secs(14 * DAY)));
    }
}
