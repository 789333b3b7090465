//! The exact in-memory index of pending payments, per database, ordered by
//! age; plus the count of records by status. Plain Rust: the Redis glue tells
//! it every way a record comes, changes, moves and goes.
//!
//! Databases map to *slots* so that SWAPDB is a swap of two numbers, and each
//! slot has a *generation* so that FLUSHDB ASYNC can forget a whole slot at
//! once: the values Redis frees later, on its lazy-free thread, carry the old
//! generation and their release is ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use crate::record::Status;

/// What the index keeps of a pending record: an opaque handle, unique among
/// the records alive (the Redis glue uses the record's address). The index
/// never dereferences it.
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
}

impl Member {
    /// Registered nowhere: releasing or changing it does nothing.
    pub const NONE: Member = Member {
        slot: u32::MAX,
        gen: 0,
    };
}

/// A pending payment as listed by [`Index::pending_page`].
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

#[derive(Default)]
struct Slot {
    gen: u32,
    /// Pending and not yet flagged stale.
    fresh: BTreeSet<Age>,
    /// Pending and flagged stale.
    stale: BTreeSet<Age>,
    /// Records by status, then pending records flagged stale.
    counts: [u64; 4],
}

/// Where the count of stale pending records is kept in `Slot::counts`.
const STALE: usize = 3;

impl Slot {
    fn map(&mut self, stale: bool) -> &mut BTreeSet<Age> {
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
        if f.status == Status::Pending && f.stale {
            bump(STALE);
        }
    }

    /// Counts a record, and lists it if pending.
    fn enter(&mut self, f: Facts, handle: Handle) {
        self.tally(f, true);
        if f.status == Status::Pending {
            self.map(f.stale).insert((f.created_at, handle));
        }
    }

    /// Uncounts a record, and unlists it if pending; whether it was listed.
    fn leave(&mut self, f: Facts, handle: Handle) -> bool {
        self.tally(f, false);
        f.status == Status::Pending && self.map(f.stale).remove(&(f.created_at, handle))
    }
}

/// The slot of a member, unless the slot was flushed since it joined.
fn live(slots: &mut [Slot], m: Member) -> Option<&mut Slot> {
    slots.get_mut(m.slot as usize).filter(|s| s.gen == m.gen)
}

/// Pending records admitted while an RDB file loads, listed in bulk once it
/// has: a million inserts at random places in a B-tree cost more than the
/// whole rest of the load, while one sort and a bulk build cost little.
#[derive(Default)]
struct Bulk {
    /// Per (slot, stale): the places still to list, in load order.
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
    pub stale: u64,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.pending += o.pending;
        self.succeeded += o.succeeded;
        self.failed += o.failed;
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

    /// An RDB load begins: list the pending records it brings in bulk, at
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
                s.map(stale).append(&mut built);
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

    /// A record enters database `db` under `key` (created, loaded or copied).
    pub fn admit(&mut self, db: i32, handle: Handle, f: Facts) -> Member {
        let slot = self.slot_of(db);
        let s = &mut self.slots[slot];
        match &mut self.bulk {
            Some(bulk) if f.status == Status::Pending => {
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
    /// Returns whether it was listed as pending.
    pub fn release(&mut self, m: Member, f: Facts, handle: Handle) -> bool {
        let Some(s) = live(&mut self.slots, m) else {
            return false;
        };
        let mut listed = s.leave(f, handle);
        let deferred = !listed && f.status == Status::Pending;
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

    /// A record's status or stale flag changed in place.
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

    /// Pending records of `db` created at or before `cutoff`, oldest first,
    /// strictly after position `after`, at most `limit` of them, leaving out
    /// those `skip` says to (CLAIM: the ones under a live lease).
    pub fn pending_page(
        &mut self,
        db: i32,
        cutoff: i64,
        after: Option<Age>,
        limit: usize,
        mut skip: impl FnMut(Handle) -> bool,
    ) -> Vec<Pending> {
        self.settle();
        let slot = self.slot_of(db);
        let s = &self.slots[slot];
        let lower = match after {
            Some(pos) => Bound::Excluded(pos),
            None => Bound::Unbounded,
        };
        let upper = Bound::Included((cutoff, Handle::MAX));
        let mut fresh = s.fresh.range((lower, upper)).peekable();
        let mut stale = s.stale.range((lower, upper)).peekable();
        let mut out = Vec::with_capacity(limit.min(1024));
        while out.len() < limit {
            let next = match (fresh.peek(), stale.peek()) {
                (Some(a), Some(b)) if a <= b => fresh.next(),
                (Some(_), Some(_)) => stale.next(),
                (Some(_), None) => fresh.next(),
                (None, Some(_)) => stale.next(),
                (None, None) => None,
            };
            let Some(&(created_at, handle)) = next else {
                break;
            };
            if skip(handle) {
                continue;
            }
            out.push(Pending { created_at, handle });
        }
        out
    }

    /// Pending records not yet flagged stale and created at or before
    /// `cutoff`, over every database starting with `first_db` (and wrapping
    /// round, so a backlog in one database cannot starve the others), oldest
    /// first within each: the sweep's next batch, as (database, record).
    pub fn stale_candidates(
        &mut self,
        cutoff: i64,
        limit: usize,
        first_db: i32,
    ) -> Vec<(i32, Pending)> {
        self.settle();
        let mut out = Vec::new();
        let from_first = self.db_slot.range(first_db..);
        let wrapped = self.db_slot.range(..first_db);
        for (&db, &slot) in from_first.chain(wrapped) {
            let fresh = &self.slots[slot as usize].fresh;
            for &(created_at, handle) in fresh.range(..=(cutoff, Handle::MAX)) {
                if out.len() >= limit {
                    return out;
                }
                out.push((db, Pending { created_at, handle }));
            }
        }
        out
    }

    /// Whether `p`, listed from database `db`, is still in the index: while
    /// it is, its record is alive and pending.
    pub fn holds(&mut self, db: i32, p: &Pending) -> bool {
        self.settle();
        let Some(&slot) = self.db_slot.get(&db) else {
            return false;
        };
        let Some(s) = self.slots.get(slot as usize) else {
            return false;
        };
        let age = p.position();
        s.fresh.contains(&age) || s.stale.contains(&age)
    }

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
        ix.pending_page(db, i64::MAX, None, usize::MAX, |_| false)
            .into_iter()
            .map(|p| name(p.handle))
            .collect()
    }

    #[test]
    fn lists_oldest_first_with_cutoff_and_paging() {
        let mut ix = Index::new();
        ix.admit(0, h(b"c"), pending(30));
        ix.admit(0, h(b"a"), pending(10));
        ix.admit(0, h(b"b"), pending(20));
        ix.admit(0, h(b"b2"), pending(20));
        assert_eq!(keys(&mut ix, 0), ["a", "b", "b2", "c"]);
        let page = ix.pending_page(0, 20, None, 2, |_| false);
        assert_eq!(page.len(), 2);
        let rest = ix.pending_page(0, 20, Some(page[1].position()), 10, |_| false);
        assert_eq!(rest.len(), 1);
        assert_eq!(name(rest[0].handle), "b2");
        assert!(ix.pending_page(0, 9, None, 10, |_| false).is_empty());
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

    #[test]
    fn claim_pages_skip_live_leases() {
        let mut ix = Index::new();
        ix.admit(0, h(b"leased"), pending(1));
        ix.admit(0, h(b"free"), pending(2));
        let page = ix.pending_page(0, i64::MAX, None, 10, |h| name(h) == "leased");
        let listed: Vec<String> = page.iter().map(|p| name(p.handle)).collect();
        assert_eq!(listed, ["free"]);
        assert_eq!(
            ix.pending_page(0, i64::MAX, None, 1, |h| name(h) == "leased")
                .len(),
            1,
            "skipped entries do not count against the limit"
        );
    }

    #[test]
    fn holds_only_what_is_still_listed() {
        let mut ix = Index::new();
        let m = ix.admit(4, h(b"k"), pending(1));
        let listed = ix.pending_page(4, i64::MAX, None, 10, |_| false)[0];
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
            let list = |ix: &mut Index| ix.pending_page(db, i64::MAX, None, usize::MAX, |_| false);
            assert_eq!(list(&mut a), list(&mut b));
            assert_eq!(ix_len(&mut b, db), b.counts(db).pending as usize);
        }
    }

    fn ix_len(ix: &mut Index, db: i32) -> usize {
        ix.pending_page(db, i64::MAX, None, usize::MAX, |_| false)
            .len()
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
            .stale_candidates(10, 10, 0)
            .into_iter()
            .map(|(db, p)| (db, name(p.handle)))
            .collect();
        assert_eq!(got, [(0, "a".to_string()), (2, "b".to_string())]);
        assert_eq!(ix.stale_candidates(10, 1, 0).len(), 1);
        // Starting elsewhere wraps round.
        let first: Vec<i32> = ix
            .stale_candidates(10, 10, 1)
            .iter()
            .map(|(db, _)| *db)
            .collect();
        assert_eq!(first, [2, 0]);
    }
}
