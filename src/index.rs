//! The exact in-memory index of unresolved (pending and unknown) payments,
//! per database, ordered by age; plus the count of records by status. Plain
//! Rust: the Redis glue tells it every way a record comes, changes, moves and
//! goes.
//!
//! An unresolved record is *ready* (listed by age, in a fresh or a stale set)
//! or *held* (a claim's lease or a RETRY back-off keeps it from claims until a
//! deadline: listed by age and by deadline). Claims walk the ready sets only,
//! after moving the holds that ran out back to them, so a claim costs
//! O(log N + k) however many records are under lease.
//!
//! Databases map to *slots* so that SWAPDB is a swap of two numbers, and each
//! slot has a *generation* so that FLUSHDB ASYNC can forget a whole slot at
//! once: the values Redis frees later, on its lazy-free thread, carry the old
//! generation and their release is ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use crate::record::Status;

/// What the index keeps of an unresolved record: an opaque handle, unique
/// among the records alive (the Redis glue uses the record's address). The
/// index never dereferences it.
pub type Handle = usize;

/// Where a record is registered. Stored in the record's in-memory wrapper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    slot: u32,
    gen: u32,
}

/// What the index needs to know of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    pub created_at: i64,
    pub status: Status,
    pub stale: bool,
    /// The hold deadline (Unix ms); 0: never held.
    pub until: i64,
}

impl Facts {
    fn unresolved(&self) -> bool {
        !self.status.is_terminal()
    }
}

impl Member {
    /// Registered nowhere: releasing or changing it does nothing.
    pub const NONE: Member = Member {
        slot: u32::MAX,
        gen: 0,
    };
}

/// An unresolved payment as listed by the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    pub created_at: i64,
    pub handle: Handle,
}

impl Pending {
    pub fn position(&self) -> Age {
        (self.created_at, self.handle)
    }
}

/// A place in the index: creation time, then the handle, which orders
/// records created in the same millisecond.
pub type Age = (i64, Handle);

/// A held record by deadline: (until, created_at, handle, stale).
type Hold = (i64, i64, Handle, bool);

#[derive(Default)]
struct Slot {
    gen: u32,
    /// Ready, not yet flagged stale.
    fresh: BTreeSet<Age>,
    /// Ready and flagged stale.
    stale: BTreeSet<Age>,
    /// Held: by age (for listings) and by deadline (to release them).
    held_age: BTreeSet<Age>,
    held: BTreeSet<Hold>,
    /// Records by status, then unresolved records flagged stale.
    counts: [u64; 5],
}

/// Where the count of stale unresolved records is kept in `Slot::counts`.
const STALE: usize = 4;

impl Slot {
    fn ready(&mut self, stale: bool) -> &mut BTreeSet<Age> {
        if stale {
            &mut self.stale
        } else {
            &mut self.fresh
        }
    }

    fn tally(&mut self, f: Facts, up: bool) {
        let mut bump = |i: usize| {
            self.counts[i] = if up {
                self.counts[i] + 1
            } else {
                self.counts[i].saturating_sub(1)
            };
        };
        bump(f.status as usize);
        if f.unresolved() && f.stale {
            bump(STALE);
        }
    }

    /// Lists an unresolved record: held when it carries a deadline (even one
    /// already past: the next claim or sweep makes it ready).
    fn list(&mut self, f: Facts, handle: Handle) {
        if f.until != 0 {
            self.held.insert((f.until, f.created_at, handle, f.stale));
            self.held_age.insert((f.created_at, handle));
        } else {
            self.ready(f.stale).insert((f.created_at, handle));
        }
    }

    /// Counts a record, and lists it if unresolved.
    fn enter(&mut self, f: Facts, handle: Handle) {
        self.tally(f, true);
        if f.unresolved() {
            self.list(f, handle);
        }
    }

    /// Uncounts a record, and unlists it if unresolved; whether it was listed.
    fn leave(&mut self, f: Facts, handle: Handle) -> bool {
        self.tally(f, false);
        if !f.unresolved() {
            return false;
        }
        let age = (f.created_at, handle);
        if f.until != 0 && self.held.remove(&(f.until, f.created_at, handle, f.stale)) {
            self.held_age.remove(&age);
            return true;
        }
        self.ready(f.stale).remove(&age)
    }

    /// Makes ready every held record whose deadline is at or before `now`.
    fn release_holds(&mut self, now: i64) {
        while let Some(&(until, created_at, handle, stale)) = self.held.first() {
            if until > now {
                break;
            }
            self.held.pop_first();
            self.held_age.remove(&(created_at, handle));
            self.ready(stale).insert((created_at, handle));
        }
    }
}

/// The slot of a member, unless the slot was flushed since it joined.
fn live(slots: &mut [Slot], m: Member) -> Option<&mut Slot> {
    slots.get_mut(m.slot as usize).filter(|s| s.gen == m.gen)
}

/// Merges sorted iterators of ages, oldest first.
fn merged<'a, const N: usize>(
    mut lists: [std::iter::Peekable<std::collections::btree_set::Range<'a, Age>>; N],
) -> impl Iterator<Item = Age> + 'a {
    std::iter::from_fn(move || {
        let mut best: Option<(usize, Age)> = None;
        for (i, list) in lists.iter_mut().enumerate() {
            if let Some(&&age) = list.peek() {
                if best.is_none_or(|(_, b)| age < b) {
                    best = Some((i, age));
                }
            }
        }
        let (i, age) = best?;
        lists.get_mut(i).and_then(Iterator::next);
        Some(age)
    })
}

/// The ages of `set` in `(after, upper]`. Empty when `after` is already past
/// `upper`: two lists walked with one `after` have different upper bounds,
/// and a B-tree range whose start is past its end panics (which would kill
/// Redis).
fn span(
    set: &BTreeSet<Age>,
    after: Option<Age>,
    upper: i64,
) -> std::iter::Peekable<std::collections::btree_set::Range<'_, Age>> {
    let upper_age = (upper, Handle::MAX);
    let lower = match after {
        Some(pos) if pos >= upper_age => return set.range(..(i64::MIN, 0)).peekable(),
        Some(pos) => Bound::Excluded(pos),
        None => Bound::Unbounded,
    };
    set.range((lower, Bound::Included(upper_age))).peekable()
}

/// Unresolved records admitted while an RDB file loads, listed in bulk once
/// it has: a million inserts at random places in a B-tree cost more than the
/// whole rest of the load, while one sort and a bulk build cost little.
#[derive(Default)]
struct Bulk {
    /// Per (slot, stale): the ready places still to list, in load order.
    entries: BTreeMap<(u32, bool), Vec<Age>>,
}

#[derive(Default)]
pub struct Index {
    slots: Vec<Slot>,
    /// Database number -> slot, for the databases in use.
    db_slot: BTreeMap<i32, u32>,
    bulk: Option<Bulk>,
}

/// Counts for one database.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub pending: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub unknown: u64,
    pub stale: u64,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.pending += o.pending;
        self.succeeded += o.succeeded;
        self.failed += o.failed;
        self.unknown += o.unknown;
        self.stale += o.stale;
    }
}

impl Index {
    pub const fn new() -> Index {
        Index {
            slots: Vec::new(),
            db_slot: BTreeMap::new(),
            bulk: None,
        }
    }

    /// An RDB load begins: list the unresolved records it brings in bulk, at
    /// [`Index::settle`].
    pub fn begin_bulk(&mut self) {
        if self.bulk.is_none() {
            self.bulk = Some(Bulk::default());
        }
    }

    /// Lists every record admitted since [`Index::begin_bulk`]. The load's
    /// end calls it; so does every operation but admit and release, so the
    /// index is exact whatever the order of events.
    pub fn settle(&mut self) {
        let Some(Bulk { entries }) = self.bulk.take() else {
            return;
        };
        for ((slot, stale), mut ages) in entries {
            ages.sort_unstable();
            // From sorted input, the set is built bottom-up with full nodes.
            let mut built: BTreeSet<Age> = ages.into_iter().collect();
            if let Some(s) = self.slots.get_mut(slot as usize) {
                s.ready(stale).append(&mut built);
            }
        }
    }

    /// The slot of database `db`, made when the database is first used.
    fn slot_of(&mut self, db: i32) -> usize {
        if let Some(&slot) = self.db_slot.get(&db) {
            return slot as usize;
        }
        let slot = self.slots.len();
        self.slots.push(Slot::default());
        self.db_slot.insert(db, slot as u32);
        slot
    }

    /// A record enters database `db` (created, loaded or copied).
    pub fn admit(&mut self, db: i32, handle: Handle, f: Facts) -> Member {
        let slot = self.slot_of(db);
        let s = &mut self.slots[slot];
        match &mut self.bulk {
            Some(bulk) if f.unresolved() && f.until == 0 => {
                s.tally(f, true);
                bulk.entries
                    .entry((slot as u32, f.stale))
                    .or_default()
                    .push((f.created_at, handle));
            }
            _ => s.enter(f, handle),
        }
        Member {
            slot: slot as u32,
            gen: s.gen,
        }
    }

    /// A record is gone (deleted, expired, evicted, overwritten, freed).
    /// Returns whether it was listed as unresolved.
    pub fn release(&mut self, m: Member, f: Facts, handle: Handle) -> bool {
        let Some(s) = live(&mut self.slots, m) else {
            return false;
        };
        let mut listed = s.leave(f, handle);
        let deferred = !listed && f.unresolved() && f.until == 0;
        if let (true, Some(bulk)) = (deferred, &mut self.bulk) {
            // Not listed yet: it is among the deferred, most likely the last
            // one (Redis drops an expired key right after loading it).
            if let Some(ages) = bulk.entries.get_mut(&(m.slot, f.stale)) {
                let gone = (f.created_at, handle);
                if let Some(i) = ages.iter().rposition(|&a| a == gone) {
                    ages.swap_remove(i);
                    listed = true;
                }
            }
        }
        listed
    }

    /// A record's status, stale flag or hold changed in place.
    pub fn change(&mut self, m: Member, old: Facts, new: Facts, handle: Handle) {
        self.settle();
        if let Some(s) = live(&mut self.slots, m) {
            s.leave(old, handle);
            s.enter(new, handle);
        }
    }

    /// RENAME or MOVE: the record now lives in database `db` (the handle
    /// stays, and so does its place when the database does).
    pub fn relocate(&mut self, m: Member, f: Facts, db: i32, handle: Handle) -> Member {
        self.settle();
        let slot = self.slot_of(db);
        if slot == m.slot as usize && self.slots[slot].gen == m.gen {
            return m;
        }
        self.release(m, f, handle);
        let s = &mut self.slots[slot];
        s.enter(f, handle);
        Member {
            slot: slot as u32,
            gen: s.gen,
        }
    }

    /// SWAPDB a b.
    pub fn swap_db(&mut self, a: i32, b: i32) {
        self.settle();
        let (sa, sb) = (self.slot_of(a), self.slot_of(b));
        self.db_slot.insert(a, sb as u32);
        self.db_slot.insert(b, sa as u32);
    }

    /// FLUSHDB (`db` >= 0) or FLUSHALL (`db` = -1), sync or async alike.
    pub fn flush(&mut self, db: i32) {
        self.settle();
        let slots: Vec<usize> = if db < 0 {
            (0..self.slots.len()).collect()
        } else {
            vec![self.slot_of(db)]
        };
        for i in slots {
            let s = &mut self.slots[i];
            let gen = s.gen.wrapping_add(1);
            *s = Slot {
                gen,
                ..Slot::default()
            };
        }
    }

    /// Unresolved records of `db` created at or before `cutoff`, held or
    /// not, oldest first, strictly after position `after`, at most `limit`
    /// of them (PAY.STUCK).
    pub fn unresolved_page(
        &mut self,
        db: i32,
        cutoff: i64,
        after: Option<Age>,
        limit: usize,
    ) -> Vec<Pending> {
        self.settle();
        let slot = self.slot_of(db);
        let s = &self.slots[slot];
        merged([
            span(&s.fresh, after, cutoff),
            span(&s.stale, after, cutoff),
            span(&s.held_age, after, cutoff),
        ])
        .take(limit)
        .map(|(created_at, handle)| Pending { created_at, handle })
        .collect()
    }

    /// Records of `db` a claim may take at `now`: not held, and flagged stale
    /// and created at or before `stale_cutoff`, or created at or before
    /// `fresh_cutoff`; oldest first, strictly after `after`, at most `limit`
    /// of them. Holds that ran out by `now` are released first.
    pub fn claim_page(
        &mut self,
        db: i32,
        now: i64,
        stale_cutoff: i64,
        fresh_cutoff: i64,
        after: Option<Age>,
        limit: usize,
    ) -> Vec<Pending> {
        self.settle();
        let slot = self.slot_of(db);
        let s = &mut self.slots[slot];
        s.release_holds(now);
        merged([
            span(&s.stale, after, stale_cutoff),
            span(&s.fresh, after, fresh_cutoff),
        ])
        .take(limit)
        .map(|(created_at, handle)| Pending { created_at, handle })
        .collect()
    }

    /// Ready records not yet flagged stale and created at or before
    /// `cutoff` or after `future` (a creation time that far ahead of this
    /// server's clock cannot be aged: it is due now), over every database
    /// starting with `first_db` (and wrapping round, so a backlog in one
    /// database cannot starve the others), oldest first within each: the
    /// sweep's next batch, as (database, record). Holds that ran out by
    /// `now` are released first.
    pub fn stale_candidates(
        &mut self,
        now: i64,
        cutoff: i64,
        future: i64,
        limit: usize,
        first_db: i32,
    ) -> Vec<(i32, Pending)> {
        self.settle();
        let mut out = Vec::new();
        let from_first = self.db_slot.range(first_db..);
        let wrapped = self.db_slot.range(..first_db);
        for (&db, &slot) in from_first.chain(wrapped) {
            let Some(s) = self.slots.get_mut(slot as usize) else {
                continue;
            };
            s.release_holds(now);
            let due = s.fresh.range(..=(cutoff, Handle::MAX));
            let ahead = s
                .fresh
                .range((Bound::Excluded((future, Handle::MAX)), Bound::Unbounded));
            for &(created_at, handle) in due.chain(ahead) {
                if out.len() >= limit {
                    return out;
                }
                out.push((db, Pending { created_at, handle }));
            }
        }
        out
    }

    /// Whether database `db` holds any record (`unresolved`: any pending or
    /// unknown one).
    pub fn holds_records(&self, db: i32, unresolved: bool) -> bool {
        let Some(s) = self
            .db_slot
            .get(&db)
            .and_then(|&i| self.slots.get(i as usize))
        else {
            return false;
        };
        let c = slot_counts(s);
        c.pending + c.unknown > 0 || (!unresolved && c.succeeded + c.failed > 0)
    }

    /// The lowest database after `after` (or the lowest of all) that holds
    /// unresolved records.
    pub fn next_unresolved_db(&mut self, after: Option<i32>) -> Option<i32> {
        self.settle();
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.db_slot
            .range((lower, Bound::Unbounded))
            .find(|(_, &slot)| {
                self.slots.get(slot as usize).is_some_and(|s| {
                    !(s.fresh.is_empty() && s.stale.is_empty() && s.held_age.is_empty())
                })
            })
            .map(|(&db, _)| db)
    }

    /// Whether `p`, listed from database `db`, is still in the index: while
    /// it is, its record is alive and unresolved.
    pub fn holds(&mut self, db: i32, p: &Pending) -> bool {
        self.settle();
        let Some(&slot) = self.db_slot.get(&db) else {
            return false;
        };
        let Some(s) = self.slots.get(slot as usize) else {
            return false;
        };
        let age = p.position();
        s.fresh.contains(&age) || s.stale.contains(&age) || s.held_age.contains(&age)
    }

    #[cfg(test)]
    pub fn counts(&mut self, db: i32) -> Counts {
        let slot = self.slot_of(db);
        slot_counts(&self.slots[slot])
    }

    /// Counts over every database.
    pub fn totals(&self) -> Counts {
        let mut c = Counts::default();
        for s in &self.slots {
            c.add(slot_counts(s));
        }
        c
    }
}

fn slot_counts(s: &Slot) -> Counts {
    Counts {
        pending: s.counts[Status::Pending as usize],
        succeeded: s.counts[Status::Succeeded as usize],
        failed: s.counts[Status::Failed as usize],
        unknown: s.counts[Status::Unknown as usize],
        stale: s.counts[STALE],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(created_at: i64) -> Facts {
        Facts {
            created_at,
            status: Status::Pending,
            stale: false,
            until: 0,
        }
    }

    /// A short name as a handle, and back.
    fn h(name: &[u8]) -> Handle {
        let mut bytes = [0u8; 8];
        bytes[..name.len()].copy_from_slice(name);
        usize::from_le_bytes(bytes)
    }

    fn name(handle: Handle) -> String {
        let bytes = handle.to_le_bytes();
        String::from_utf8(bytes.into_iter().filter(|&b| b != 0).collect()).unwrap()
    }

    fn keys(ix: &mut Index, db: i32) -> Vec<String> {
        ix.unresolved_page(db, i64::MAX, None, usize::MAX)
            .into_iter()
            .map(|p| name(p.handle))
            .collect()
    }

    #[test]
    fn holds_records_tells_databases_with_records_apart() {
        let mut ix = Index::new();
        let done = Facts {
            status: Status::Failed,
            ..pending(10)
        };
        ix.admit(1, h(b"b"), done);
        let m = ix.admit(2, h(b"c"), pending(10));
        assert!(!ix.holds_records(0, false));
        assert!(ix.holds_records(1, false) && !ix.holds_records(1, true));
        assert!(ix.holds_records(2, true));
        ix.release(m, pending(10), h(b"c"));
        assert!(!ix.holds_records(2, false));
    }

    #[test]
    fn next_unresolved_db_skips_databases_without_unresolved_records() {
        let mut ix = Index::new();
        assert_eq!(ix.next_unresolved_db(None), None);
        ix.admit(3, h(b"a"), pending(10));
        let done = Facts {
            status: Status::Succeeded,
            ..pending(10)
        };
        ix.admit(1, h(b"b"), done);
        let m = ix.admit(5, h(b"c"), pending(10));
        ix.begin_bulk();
        ix.admit(9, h(b"d"), pending(10));
        assert_eq!(ix.next_unresolved_db(None), Some(3));
        assert_eq!(ix.next_unresolved_db(Some(3)), Some(5));
        ix.release(m, pending(10), h(b"c"));
        assert_eq!(ix.next_unresolved_db(Some(3)), Some(9), "listed in bulk");
        assert_eq!(ix.next_unresolved_db(Some(9)), None);
    }

    #[test]
    fn lists_oldest_first_with_cutoff_and_paging() {
        let mut ix = Index::new();
        ix.admit(0, h(b"c"), pending(30));
        ix.admit(0, h(b"a"), pending(10));
        ix.admit(0, h(b"b"), pending(20));
        ix.admit(0, h(b"b2"), pending(20));
        assert_eq!(keys(&mut ix, 0), ["a", "b", "b2", "c"]);
        let page = ix.unresolved_page(0, 20, None, 2);
        assert_eq!(page.len(), 2);
        let rest = ix.unresolved_page(0, 20, Some(page[1].position()), 10);
        assert_eq!(rest.len(), 1);
        assert_eq!(name(rest[0].handle), "b2");
        assert!(ix.unresolved_page(0, 9, None, 10).is_empty());
        assert!(keys(&mut ix, 1).is_empty());
    }

    #[test]
    fn stale_and_fresh_lists_merge_in_age_order() {
        let mut ix = Index::new();
        let m1 = ix.admit(0, h(b"one"), pending(1));
        ix.admit(0, h(b"two"), pending(2));
        ix.admit(
            0,
            h(b"three"),
            Facts {
                stale: true,
                ..pending(3)
            },
        );
        ix.change(
            m1,
            pending(1),
            Facts {
                stale: true,
                ..pending(1)
            },
            h(b"one"),
        );
        assert_eq!(keys(&mut ix, 0), ["one", "two", "three"]);
        assert_eq!(ix.counts(0).stale, 2);
        assert_eq!(ix.counts(0).pending, 3);
    }

    #[test]
    fn resolving_and_releasing_keep_counts_exact() {
        let mut ix = Index::new();
        let m = ix.admit(0, h(b"k"), pending(5));
        let done = Facts {
            status: Status::Succeeded,
            ..pending(5)
        };
        ix.change(m, pending(5), done, h(b"k"));
        assert!(keys(&mut ix, 0).is_empty());
        assert_eq!(
            ix.counts(0),
            Counts {
                succeeded: 1,
                ..Counts::default()
            }
        );
        assert!(!ix.release(m, done, h(b"k")));
        assert_eq!(ix.counts(0), Counts::default());
        let m2 = ix.admit(0, h(b"p"), pending(6));
        assert!(ix.release(m2, pending(6), h(b"p")));
        assert_eq!(ix.totals(), Counts::default());
    }

    #[test]
    fn relocate_follows_the_record() {
        let mut ix = Index::new();
        let m = ix.admit(0, h(b"new"), pending(1));
        assert_eq!(
            ix.relocate(m, pending(1), 0, h(b"new")),
            m,
            "RENAME in place"
        );
        assert_eq!(keys(&mut ix, 0), ["new"]);
        let m = ix.relocate(m, pending(1), 3, h(b"new"));
        assert!(keys(&mut ix, 0).is_empty());
        assert_eq!(keys(&mut ix, 3), ["new"]);
        assert_eq!(ix.counts(3).pending, 1);
        assert_eq!(ix.counts(0).pending, 0);
        ix.release(m, pending(1), h(b"new"));
        assert_eq!(ix.totals(), Counts::default());
    }

    #[test]
    fn swapdb_swaps_whole_databases() {
        let mut ix = Index::new();
        let m = ix.admit(0, h(b"zero"), pending(1));
        ix.admit(1, h(b"one"), pending(1));
        ix.swap_db(0, 1);
        assert_eq!(keys(&mut ix, 0), ["one"]);
        assert_eq!(keys(&mut ix, 1), ["zero"]);
        // The record keeps its membership: releasing it empties db 1.
        ix.release(m, pending(1), h(b"zero"));
        assert!(keys(&mut ix, 1).is_empty());
        ix.swap_db(5, 0);
        assert_eq!(keys(&mut ix, 5), ["one"]);
    }

    #[test]
    fn flush_forgets_and_ignores_late_frees() {
        let mut ix = Index::new();
        let m0 = ix.admit(0, h(b"a"), pending(1));
        let m1 = ix.admit(1, h(b"b"), pending(1));
        ix.flush(0);
        assert!(keys(&mut ix, 0).is_empty());
        let fresh = ix.admit(0, h(b"c"), pending(1));
        // The flushed value is freed later (lazy-free thread): no effect.
        assert!(!ix.release(m0, pending(1), h(b"a")));
        assert_eq!(keys(&mut ix, 0), ["c"]);
        ix.flush(-1);
        assert_eq!(ix.totals(), Counts::default());
        assert!(!ix.release(m1, pending(1), h(b"b")));
        assert!(!ix.release(fresh, pending(1), h(b"c")));
        ix.admit(1, h(b"d"), pending(2));
        assert_eq!(ix.totals().pending, 1);
    }

    fn held(created_at: i64, until: i64) -> Facts {
        Facts {
            until,
            ..pending(created_at)
        }
    }

    fn claimable(ix: &mut Index, now: i64, limit: usize) -> Vec<String> {
        ix.claim_page(0, now, i64::MAX, i64::MAX, None, limit)
            .into_iter()
            .map(|p| name(p.handle))
            .collect()
    }

    #[test]
    fn claims_skip_held_records_and_take_them_back_when_the_hold_ends() {
        let mut ix = Index::new();
        let m = ix.admit(0, h(b"leased"), pending(1));
        ix.admit(0, h(b"free"), pending(2));
        ix.change(m, pending(1), held(1, 100), h(b"leased"));
        assert_eq!(claimable(&mut ix, 50, 10), ["free"]);
        assert_eq!(
            claimable(&mut ix, 50, 1),
            ["free"],
            "held ones cost nothing"
        );
        // Listings still show a held record, in age order.
        assert_eq!(keys(&mut ix, 0), ["leased", "free"]);
        assert_eq!(claimable(&mut ix, 100, 10), ["leased", "free"]);
        // A released hold keeps its facts; changing it again finds it.
        ix.change(m, held(1, 100), held(1, 200), h(b"leased"));
        assert_eq!(claimable(&mut ix, 150, 10), ["free"]);
        assert!(ix.release(m, held(1, 200), h(b"leased")));
        assert_eq!(keys(&mut ix, 0), ["free"]);
        assert_eq!(ix.counts(0).pending, 1);
    }

    #[test]
    fn a_claim_walks_only_ready_records_however_many_are_held() {
        let mut ix = Index::new();
        for i in 0..10_000 {
            ix.admit(0, i + 1, held(i as i64, 1_000_000 + i as i64));
        }
        ix.admit(0, h(b"last"), pending(20_000));
        // The one ready record comes back at once: the held ones sit in
        // another set, ordered by deadline.
        assert_eq!(claimable(&mut ix, 10, 1), ["last"]);
        assert_eq!(
            ix.unresolved_page(0, i64::MAX, None, usize::MAX).len(),
            10_001
        );
        assert_eq!(
            ix.claim_page(0, 1_000_004, i64::MAX, i64::MAX, None, 100)
                .len(),
            6
        );
    }

    #[test]
    fn claim_cutoffs_apply_to_fresh_and_stale_records() {
        let mut ix = Index::new();
        ix.admit(0, h(b"old"), pending(1));
        ix.admit(0, h(b"young"), pending(50));
        ix.admit(
            0,
            h(b"flagged"),
            Facts {
                stale: true,
                ..pending(60)
            },
        );
        let take = |ix: &mut Index, stale_cutoff, fresh_cutoff| -> Vec<String> {
            ix.claim_page(0, 0, stale_cutoff, fresh_cutoff, None, 10)
                .into_iter()
                .map(|p| name(p.handle))
                .collect()
        };
        assert_eq!(take(&mut ix, i64::MAX, 10), ["old", "flagged"]);
        assert_eq!(take(&mut ix, 10, 10), ["old"]);
        assert_eq!(
            take(&mut ix, i64::MAX, i64::MAX),
            ["old", "young", "flagged"]
        );
    }

    #[test]
    fn a_page_after_a_young_stale_record_is_empty_not_a_panic() {
        // A record flagged stale, then `pay.stale-after-ms` raised: it is
        // younger than the fresh cutoff, and the next page starts past it.
        let mut ix = Index::new();
        ix.admit(0, h(b"old"), pending(1));
        ix.admit(
            0,
            h(b"young"),
            Facts {
                stale: true,
                ..pending(500)
            },
        );
        let page = ix.claim_page(0, 1000, i64::MAX, 10, None, 10);
        assert_eq!(page.len(), 2);
        let next = ix.claim_page(0, 1000, i64::MAX, 10, Some(page[1].position()), 10);
        assert!(next.is_empty());
        let listed = ix.unresolved_page(0, 10, Some((20, 0)), 10);
        assert!(listed.is_empty());
    }

    #[test]
    fn unknown_records_are_listed_and_counted_apart() {
        let mut ix = Index::new();
        let m = ix.admit(0, h(b"u"), pending(1));
        let unknown = Facts {
            status: Status::Unknown,
            stale: true,
            ..pending(1)
        };
        ix.change(m, pending(1), unknown, h(b"u"));
        assert_eq!(keys(&mut ix, 0), ["u"]);
        assert_eq!(
            ix.counts(0),
            Counts {
                unknown: 1,
                stale: 1,
                ..Counts::default()
            }
        );
        assert!(ix.release(m, unknown, h(b"u")));
        assert_eq!(ix.totals(), Counts::default());
    }

    #[test]
    fn holds_only_what_is_still_listed() {
        let mut ix = Index::new();
        let m = ix.admit(4, h(b"k"), pending(1));
        let listed = ix.unresolved_page(4, i64::MAX, None, 10)[0];
        assert!(ix.holds(4, &listed));
        assert!(!ix.holds(5, &listed));
        let flagged = Facts {
            stale: true,
            ..pending(1)
        };
        ix.change(m, pending(1), flagged, h(b"k"));
        assert!(ix.holds(4, &listed), "flagging keeps the entry");
        ix.release(m, flagged, h(b"k"));
        assert!(!ix.holds(4, &listed));
    }

    #[test]
    fn a_bulk_load_lists_exactly_what_one_by_one_admits_would() {
        let flagged = |t| Facts {
            stale: true,
            ..pending(t)
        };
        let done = Facts {
            status: Status::Succeeded,
            ..pending(0)
        };
        // Records in hash order, as an RDB file brings them; some expire
        // on load (released before they are listed).
        let plan: Vec<(i32, Facts, bool)> = (0..500u64)
            .map(|i| {
                let t = (i * 7919 % 500) as i64;
                let f = match i % 5 {
                    0 => flagged(t),
                    1 => done,
                    _ => pending(t),
                };
                ((i % 3) as i32, f, i % 11 == 0)
            })
            .collect();
        let load = |bulk: bool| {
            let mut ix = Index::new();
            if bulk {
                ix.begin_bulk();
            }
            for (n, &(db, f, expired)) in plan.iter().enumerate() {
                let m = ix.admit(db, n + 1, f);
                if expired {
                    ix.release(m, f, n + 1);
                }
            }
            let counted = ix.totals();
            ix.settle();
            (counted, ix)
        };
        let (one_by_one, mut a) = load(false);
        let (bulk, mut b) = load(true);
        assert_eq!(bulk, one_by_one, "counts are exact before the bulk settles");
        assert_eq!(
            bulk.stale,
            100 - 10,
            "every fifth flagged, every 55th expired"
        );
        for db in 0..3 {
            let list = |ix: &mut Index| ix.unresolved_page(db, i64::MAX, None, usize::MAX);
            assert_eq!(list(&mut a), list(&mut b));
            assert_eq!(ix_len(&mut b, db), b.counts(db).pending as usize);
        }
    }

    fn ix_len(ix: &mut Index, db: i32) -> usize {
        ix.unresolved_page(db, i64::MAX, None, usize::MAX).len()
    }

    #[test]
    fn any_other_operation_settles_a_bulk_first() {
        let mut ix = Index::new();
        ix.begin_bulk();
        let m = ix.admit(0, h(b"a"), pending(2));
        ix.admit(0, h(b"b"), pending(1));
        let flagged = Facts {
            stale: true,
            ..pending(2)
        };
        ix.change(m, pending(2), flagged, h(b"a"));
        assert_eq!(keys(&mut ix, 0), ["b", "a"]);
        assert_eq!(ix.counts(0).stale, 1);
        ix.admit(0, h(b"c"), pending(0));
        assert_eq!(keys(&mut ix, 0), ["c", "b", "a"], "the bulk ended");
    }

    #[test]
    fn a_far_database_costs_one_slot() {
        let mut ix = Index::new();
        ix.admit(1_000_000_000, h(b"far"), pending(1));
        assert_eq!(ix.slots.len(), 1);
        assert_eq!(keys(&mut ix, 1_000_000_000), ["far"]);
        ix.swap_db(1_000_000_000, 7);
        assert_eq!(keys(&mut ix, 7), ["far"]);
        assert_eq!(ix.slots.len(), 2);
    }

    #[test]
    fn stale_candidates_span_databases_and_skip_flagged() {
        let mut ix = Index::new();
        ix.admit(0, h(b"a"), pending(5));
        ix.admit(2, h(b"b"), pending(1));
        ix.admit(
            2,
            h(b"c"),
            Facts {
                stale: true,
                ..pending(1)
            },
        );
        ix.admit(2, h(b"young"), pending(50));
        let got: Vec<(i32, String)> = ix
            .stale_candidates(0, 10, i64::MAX, 10, 0)
            .into_iter()
            .map(|(db, p)| (db, name(p.handle)))
            .collect();
        assert_eq!(got, [(0, "a".to_string()), (2, "b".to_string())]);
        assert_eq!(ix.stale_candidates(0, 10, i64::MAX, 1, 0).len(), 1);
        // Starting elsewhere wraps round.
        let first: Vec<i32> = ix
            .stale_candidates(0, 10, i64::MAX, 10, 1)
            .iter()
            .map(|(db, _)| *db)
            .collect();
        assert_eq!(first, [2, 0]);
        // A record dated far ahead of the clock is due at once.
        ix.admit(3, h(b"ahead"), pending(1_000));
        let got: Vec<String> = ix
            .stale_candidates(0, 10, 500, 10, 3)
            .into_iter()
            .map(|(_, p)| name(p.handle))
            .collect();
        assert_eq!(got, ["ahead", "a", "b"]);
    }

    #[test]
    fn the_sweep_sees_records_whose_hold_ended() {
        let mut ix = Index::new();
        ix.admit(0, h(b"h"), held(1, 100));
        assert!(ix.stale_candidates(50, 10, i64::MAX, 10, 0).is_empty());
        assert_eq!(ix.stale_candidates(100, 10, i64::MAX, 10, 0).len(), 1);
    }
}
