//! The exact in-memory index of pending payments, per database, ordered by
//! age; plus the count of records by status. Plain Rust: the Redis glue tells
//! it every way a record comes, changes, moves and goes.
//!
//! Databases map to *slots* so that SWAPDB is a swap of two numbers, and each
//! slot has a *generation* so that FLUSHDB ASYNC can forget a whole slot at
//! once: the values Redis frees later, on its lazy-free thread, carry the old
//! generation and their release is ignored.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::record::Status;

/// Where a record is registered. Stored in the record's in-memory wrapper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    slot: u32,
    gen: u32,
    /// Unique for the life of the process: breaks ties between equal timestamps.
    pub id: u64,
}

/// What the index needs to know of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    pub created_at: i64,
    pub status: Status,
    pub stale: bool,
    /// When the record's lease runs out (Unix ms); 0: no lease.
    pub lease_until: i64,
}

/// A pending payment as listed by [`Index::pending_page`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub created_at: i64,
    pub id: u64,
    pub key: Box<[u8]>,
}

impl Pending {
    pub fn position(&self) -> (i64, u64) {
        (self.created_at, self.id)
    }
}

type Age = (i64, u64);

/// An index entry: where the pending record lives, and until when it is leased.
#[derive(Clone, Debug)]
struct Entry {
    key: Box<[u8]>,
    lease_until: i64,
}

impl Entry {
    fn new(key: &[u8], f: Facts) -> Entry {
        Entry {
            key: key.into(),
            lease_until: f.lease_until,
        }
    }
}

#[derive(Default)]
struct Slot {
    gen: u32,
    /// Pending and not yet flagged stale.
    fresh: BTreeMap<Age, Entry>,
    /// Pending and flagged stale.
    stale: BTreeMap<Age, Entry>,
    counts: [u64; 3],
}

impl Slot {
    fn map(&mut self, stale: bool) -> &mut BTreeMap<Age, Entry> {
        if stale {
            &mut self.stale
        } else {
            &mut self.fresh
        }
    }
}

#[derive(Default)]
pub struct Index {
    slots: Vec<Slot>,
    /// Database number -> slot, for the databases in use.
    db_slot: BTreeMap<i32, u32>,
    next_id: u64,
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
            next_id: 0,
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

    fn live_slot(&mut self, m: Member) -> Option<&mut Slot> {
        self.slots
            .get_mut(m.slot as usize)
            .filter(|s| s.gen == m.gen)
    }

    /// A record enters database `db` under `key` (created, loaded or copied).
    pub fn admit(&mut self, db: i32, key: &[u8], f: Facts) -> Member {
        let id = self.next_id;
        self.next_id += 1;
        let slot = self.slot_of(db);
        let s = &mut self.slots[slot];
        s.counts[f.status as usize] += 1;
        if f.status == Status::Pending {
            s.map(f.stale)
                .insert((f.created_at, id), Entry::new(key, f));
        }
        Member {
            slot: slot as u32,
            gen: s.gen,
            id,
        }
    }

    /// A record is gone (deleted, expired, evicted, overwritten, freed).
    /// Returns the key it was indexed under, if it was pending.
    pub fn release(&mut self, m: Member, f: Facts) -> Option<Box<[u8]>> {
        let s = self.live_slot(m)?;
        s.counts[f.status as usize] = s.counts[f.status as usize].saturating_sub(1);
        if f.status == Status::Pending {
            s.map(f.stale).remove(&(f.created_at, m.id)).map(|e| e.key)
        } else {
            None
        }
    }

    /// A record's status or stale flag changed in place.
    pub fn change(&mut self, m: Member, old: Facts, new: Facts, key: &[u8]) {
        let Some(s) = self.live_slot(m) else { return };
        s.counts[old.status as usize] = s.counts[old.status as usize].saturating_sub(1);
        s.counts[new.status as usize] += 1;
        if old.status == Status::Pending {
            s.map(old.stale).remove(&(old.created_at, m.id));
        }
        if new.status == Status::Pending {
            s.map(new.stale)
                .insert((new.created_at, m.id), Entry::new(key, new));
        }
    }

    /// RENAME: the record now lives under `key`.
    pub fn rename(&mut self, m: Member, f: Facts, key: &[u8]) {
        if f.status != Status::Pending {
            return;
        }
        if let Some(entry) = self
            .live_slot(m)
            .and_then(|s| s.map(f.stale).get_mut(&(f.created_at, m.id)))
        {
            entry.key = key.into();
        }
    }

    /// MOVE (or anything that lands a record in another database): returns
    /// the record's new membership.
    pub fn relocate(&mut self, m: Member, f: Facts, db: i32, key: &[u8]) -> Member {
        let slot = self.slot_of(db);
        if slot == m.slot as usize && self.slots[slot].gen == m.gen {
            self.rename(m, f, key);
            return m;
        }
        self.release(m, f);
        let s = &mut self.slots[slot];
        s.counts[f.status as usize] += 1;
        if f.status == Status::Pending {
            s.map(f.stale)
                .insert((f.created_at, m.id), Entry::new(key, f));
        }
        Member {
            slot: slot as u32,
            gen: s.gen,
            id: m.id,
        }
    }

    /// SWAPDB a b.
    pub fn swap_db(&mut self, a: i32, b: i32) {
        let (sa, sb) = (self.slot_of(a), self.slot_of(b));
        self.db_slot.insert(a, sb as u32);
        self.db_slot.insert(b, sa as u32);
    }

    /// FLUSHDB (`db` >= 0) or FLUSHALL (`db` = -1), sync or async alike.
    pub fn flush(&mut self, db: i32) {
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
    /// strictly after position `after`, at most `limit` of them. With
    /// `free_at`, records under a lease still live at that time are skipped.
    pub fn pending_page(
        &mut self,
        db: i32,
        cutoff: i64,
        after: Option<(i64, u64)>,
        limit: usize,
        free_at: Option<i64>,
    ) -> Vec<Pending> {
        let slot = self.slot_of(db);
        let s = &self.slots[slot];
        let lower = match after {
            Some(pos) => Bound::Excluded(pos),
            None => Bound::Unbounded,
        };
        let upper = Bound::Included((cutoff, u64::MAX));
        let mut fresh = s.fresh.range((lower, upper)).peekable();
        let mut stale = s.stale.range((lower, upper)).peekable();
        let mut out = Vec::with_capacity(limit.min(1024));
        while out.len() < limit {
            let next = match (fresh.peek(), stale.peek()) {
                (Some(a), Some(b)) if a.0 <= b.0 => fresh.next(),
                (Some(_), Some(_)) => stale.next(),
                (Some(_), None) => fresh.next(),
                (None, Some(_)) => stale.next(),
                (None, None) => None,
            };
            let Some((&(created_at, id), entry)) = next else {
                break;
            };
            if free_at.is_some_and(|now| entry.lease_until > now) {
                continue;
            }
            out.push(Pending {
                created_at,
                id,
                key: entry.key.clone(),
            });
        }
        out
    }

    /// Pending records not yet flagged stale and created at or before
    /// `cutoff`, over every database starting with `first_db` (and wrapping
    /// round, so a backlog in one database cannot starve the others), oldest
    /// first within each: the sweep's next batch, as (database, record).
    pub fn stale_candidates(
        &self,
        cutoff: i64,
        limit: usize,
        first_db: i32,
    ) -> Vec<(i32, Pending)> {
        let mut out = Vec::new();
        let from_first = self.db_slot.range(first_db..);
        let wrapped = self.db_slot.range(..first_db);
        for (&db, &slot) in from_first.chain(wrapped) {
            let fresh = &self.slots[slot as usize].fresh;
            for (&(created_at, id), entry) in fresh.range(..=(cutoff, u64::MAX)) {
                if out.len() >= limit {
                    return out;
                }
                let pending = Pending {
                    created_at,
                    id,
                    key: entry.key.clone(),
                };
                out.push((db, pending));
            }
        }
        out
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
        stale: s.stale.len() as u64,
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
            lease_until: 0,
        }
    }

    fn keys(ix: &mut Index, db: i32) -> Vec<String> {
        ix.pending_page(db, i64::MAX, None, usize::MAX, None)
            .into_iter()
            .map(|p| String::from_utf8(p.key.into()).unwrap())
            .collect()
    }

    #[test]
    fn lists_oldest_first_with_cutoff_and_paging() {
        let mut ix = Index::new();
        ix.admit(0, b"c", pending(30));
        ix.admit(0, b"a", pending(10));
        ix.admit(0, b"b", pending(20));
        ix.admit(0, b"b2", pending(20));
        assert_eq!(keys(&mut ix, 0), ["a", "b", "b2", "c"]);
        let page = ix.pending_page(0, 20, None, 2, None);
        assert_eq!(page.len(), 2);
        let rest = ix.pending_page(0, 20, Some(page[1].position()), 10, None);
        assert_eq!(rest.len(), 1);
        assert_eq!(&*rest[0].key, b"b2");
        assert!(ix.pending_page(0, 9, None, 10, None).is_empty());
        assert!(keys(&mut ix, 1).is_empty());
    }

    #[test]
    fn stale_and_fresh_lists_merge_in_age_order() {
        let mut ix = Index::new();
        let m1 = ix.admit(0, b"one", pending(1));
        ix.admit(0, b"two", pending(2));
        ix.admit(
            0,
            b"three",
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
            b"one",
        );
        assert_eq!(keys(&mut ix, 0), ["one", "two", "three"]);
        assert_eq!(ix.counts(0).stale, 2);
        assert_eq!(ix.counts(0).pending, 3);
    }

    #[test]
    fn resolving_and_releasing_keep_counts_exact() {
        let mut ix = Index::new();
        let m = ix.admit(0, b"k", pending(5));
        let done = Facts {
            status: Status::Succeeded,
            ..pending(5)
        };
        ix.change(m, pending(5), done, b"k");
        assert!(keys(&mut ix, 0).is_empty());
        assert_eq!(
            ix.counts(0),
            Counts {
                succeeded: 1,
                ..Counts::default()
            }
        );
        assert_eq!(ix.release(m, done), None);
        assert_eq!(ix.counts(0), Counts::default());
        let m2 = ix.admit(0, b"p", pending(6));
        assert_eq!(ix.release(m2, pending(6)).as_deref(), Some(&b"p"[..]));
        assert_eq!(ix.totals(), Counts::default());
    }

    #[test]
    fn rename_and_relocate_follow_the_record() {
        let mut ix = Index::new();
        let m = ix.admit(0, b"old", pending(1));
        ix.rename(m, pending(1), b"new");
        assert_eq!(keys(&mut ix, 0), ["new"]);
        let m = ix.relocate(m, pending(1), 3, b"new");
        assert!(keys(&mut ix, 0).is_empty());
        assert_eq!(keys(&mut ix, 3), ["new"]);
        assert_eq!(ix.counts(3).pending, 1);
        assert_eq!(ix.counts(0).pending, 0);
        ix.release(m, pending(1));
        assert_eq!(ix.totals(), Counts::default());
    }

    #[test]
    fn swapdb_swaps_whole_databases() {
        let mut ix = Index::new();
        let m = ix.admit(0, b"zero", pending(1));
        ix.admit(1, b"one", pending(1));
        ix.swap_db(0, 1);
        assert_eq!(keys(&mut ix, 0), ["one"]);
        assert_eq!(keys(&mut ix, 1), ["zero"]);
        // The record keeps its membership: releasing it empties db 1.
        ix.release(m, pending(1));
        assert!(keys(&mut ix, 1).is_empty());
        ix.swap_db(5, 0);
        assert_eq!(keys(&mut ix, 5), ["one"]);
    }

    #[test]
    fn flush_forgets_and_ignores_late_frees() {
        let mut ix = Index::new();
        let m0 = ix.admit(0, b"a", pending(1));
        let m1 = ix.admit(1, b"b", pending(1));
        ix.flush(0);
        assert!(keys(&mut ix, 0).is_empty());
        let fresh = ix.admit(0, b"c", pending(1));
        // The flushed value is freed later (lazy-free thread): no effect.
        assert_eq!(ix.release(m0, pending(1)), None);
        assert_eq!(keys(&mut ix, 0), ["c"]);
        ix.flush(-1);
        assert_eq!(ix.totals(), Counts::default());
        assert_eq!(ix.release(m1, pending(1)), None);
        assert_eq!(ix.release(fresh, pending(1)), None);
        ix.admit(1, b"d", pending(2));
        assert_eq!(ix.totals().pending, 1);
    }

    #[test]
    fn claim_pages_skip_live_leases() {
        let mut ix = Index::new();
        let m = ix.admit(0, b"leased", pending(1));
        ix.admit(0, b"free", pending(2));
        let leased = Facts {
            lease_until: 100,
            ..pending(1)
        };
        ix.change(m, pending(1), leased, b"leased");
        let keys = |ix: &mut Index, at| -> Vec<Box<[u8]>> {
            ix.pending_page(0, i64::MAX, None, 10, at)
                .into_iter()
                .map(|p| p.key)
                .collect()
        };
        assert_eq!(keys(&mut ix, Some(50)), [Box::from(&b"free"[..])]);
        assert_eq!(
            keys(&mut ix, Some(100)).len(),
            2,
            "a lease runs out at its deadline"
        );
        assert_eq!(keys(&mut ix, None).len(), 2, "listing shows leased records");
    }

    #[test]
    fn a_far_database_costs_one_slot() {
        let mut ix = Index::new();
        ix.admit(1_000_000_000, b"far", pending(1));
        assert_eq!(ix.slots.len(), 1);
        assert_eq!(keys(&mut ix, 1_000_000_000), ["far"]);
        ix.swap_db(1_000_000_000, 7);
        assert_eq!(keys(&mut ix, 7), ["far"]);
        assert_eq!(ix.slots.len(), 2);
    }

    #[test]
    fn stale_candidates_span_databases_and_skip_flagged() {
        let mut ix = Index::new();
        ix.admit(0, b"a", pending(5));
        ix.admit(2, b"b", pending(1));
        ix.admit(
            2,
            b"c",
            Facts {
                stale: true,
                ..pending(1)
            },
        );
        ix.admit(2, b"young", pending(50));
        let got: Vec<(i32, Box<[u8]>)> = ix
            .stale_candidates(10, 10, 0)
            .into_iter()
            .map(|(db, p)| (db, p.key))
            .collect();
        assert_eq!(got, [(0, Box::from(&b"a"[..])), (2, Box::from(&b"b"[..]))]);
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
