//! Optimistic concurrency: what a write carrying a base version does when the record moved on.

use crate::record::Record;
use crate::schema::ConflictStrategy;
use std::collections::BTreeSet;

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Apply,
    /// Stale base version under `reject`: 409 with the current record.
    Stale,
    /// Under `merge`: these fields of the patch changed since its base version.
    Overlap(Vec<String>),
}

/// Decides a write. `base` is the version the client last saw (if it sent one);
/// `patch_fields` the fields it writes (empty for delete: a delete overlaps any change);
/// `changed_since_base` lists the fields changed by versions after `base`, or None when
/// that history is no longer known (then a merge is refused).
pub fn decide(
    strategy: ConflictStrategy,
    current_version: i64,
    base: Option<i64>,
    patch_fields: &[&str],
    changed_since_base: impl FnOnce() -> Option<BTreeSet<String>>,
) -> Decision {
    let Some(base) = base else {
        return Decision::Apply;
    };
    if base == current_version {
        return Decision::Apply;
    }
    match strategy {
        ConflictStrategy::Lww => Decision::Apply,
        ConflictStrategy::Reject => Decision::Stale,
        ConflictStrategy::Merge if base > current_version => Decision::Stale,
        ConflictStrategy::Merge => match changed_since_base() {
            None => Decision::Stale,
            Some(changed) if patch_fields.is_empty() => Decision::Overlap(changed.into_iter().collect()),
            Some(changed) => {
                let overlap: Vec<String> =
                    patch_fields.iter().filter(|f| changed.contains(**f)).map(|f| f.to_string()).collect();
                if overlap.is_empty() {
                    Decision::Apply
                } else {
                    Decision::Overlap(overlap)
                }
            }
        },
    }
}

/// Data fields whose values differ between two versions of a record.
pub fn changed_fields(old: &Record, new: &Record) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (k, v) in new.data() {
        if old.get(k) != Some(v) {
            out.insert(k.clone());
        }
    }
    for (k, _) in old.data() {
        if new.get(k).is_none() {
            out.insert(k.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConflictStrategy::*;

    fn changed(f: &[&str]) -> Option<BTreeSet<String>> {
        Some(f.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn no_base_or_current_base_applies() {
        assert_eq!(decide(Reject, 3, None, &["a"], || None), Decision::Apply);
        assert_eq!(decide(Reject, 3, Some(3), &["a"], || None), Decision::Apply);
    }

    #[test]
    fn strategies_on_stale_base() {
        assert_eq!(decide(Reject, 3, Some(2), &["a"], || changed(&["b"])), Decision::Stale);
        assert_eq!(decide(Lww, 3, Some(2), &["a"], || changed(&["a"])), Decision::Apply);
        assert_eq!(decide(Merge, 3, Some(2), &["a"], || changed(&["b"])), Decision::Apply);
        assert_eq!(
            decide(Merge, 3, Some(1), &["a", "b"], || changed(&["b"])),
            Decision::Overlap(vec!["b".into()])
        );
        assert_eq!(decide(Merge, 3, Some(1), &["a"], || None), Decision::Stale);
        assert_eq!(decide(Merge, 3, Some(1), &[], || changed(&["b"])), Decision::Overlap(vec!["b".into()]));
    }
}
