//! The checker: judges the whole history once the faults have stopped and the
//! system has settled, against the provider's ledger, what Slack received,
//! and what every server holds. Each invariant comes with its counts; any
//! violation names the payments.

use std::collections::{BTreeMap, BTreeSet};

use crate::history::Story;
use crate::provider::Entry;

pub type Record = BTreeMap<String, String>;

/// What one server holds at the end.
pub struct ServerState {
    pub name: String,
    pub role: String,
    /// Every payment key (SCAN) with its record (PAY.CHECK).
    pub records: BTreeMap<String, Record>,
    /// The keys PAY.STUCK OLDER 0 lists (the index).
    pub index: BTreeSet<String>,
}

/// Everything the checker reads.
pub struct Evidence<'a> {
    pub stories: &'a BTreeMap<u64, Story>,
    pub charges: &'a [Entry],
    pub declines: &'a [Entry],
    /// Keys named in Slack messages about unknown outcomes.
    pub alerted_unknown: &'a BTreeSet<String>,
    /// Keys the sidecar's alert state marks as alerted unknown, when every
    /// queued message was delivered (else empty): counted in a message even
    /// if not named.
    pub counted_unknown: &'a BTreeSet<String>,
    /// Whether a payment only counted (not named) is alerted.
    pub accept_counted: bool,
    /// The primary first.
    pub servers: &'a [ServerState],
    /// Exits of servers, Sentinels and sidecars nobody caused.
    pub deaths: &'a [String],
    /// The highest `pay_index_misses` seen on each server.
    pub index_misses: &'a BTreeMap<String, u64>,
    pub key_prefix: &'a str,
}

pub struct Verdict {
    pub number: u8,
    pub name: &'static str,
    pub counts: String,
    pub violations: Vec<String>,
    /// Something worth a reader's attention that is not a violation.
    pub finding: Option<String>,
}

impl Verdict {
    pub fn holds(&self) -> bool {
        self.violations.is_empty()
    }
}

pub fn check(ev: &Evidence) -> Vec<Verdict> {
    vec![
        no_double_charge(ev),
        redis_agrees_with_provider(ev),
        nothing_lost(ev),
        everything_resolved_or_alerted(ev),
        processes_and_index(ev),
    ]
}

fn primary<'e>(ev: &'e Evidence<'_>) -> &'e BTreeMap<String, Record> {
    static EMPTY: BTreeMap<String, Record> = BTreeMap::new();
    ev.servers.first().map_or(&EMPTY, |s| &s.records)
}

fn status<'a>(ev: &'a Evidence<'_>, txn: &str) -> Option<&'a str> {
    primary(ev)
        .get(&format!("{}{txn}", ev.key_prefix))
        .and_then(|r| r.get("status"))
        .map(String::as_str)
}

fn reason(ev: &Evidence, txn: &str) -> String {
    primary(ev)
        .get(&format!("{}{txn}", ev.key_prefix))
        .and_then(|r| r.get("reason"))
        .cloned()
        .unwrap_or_default()
}

fn describe(e: &Entry) -> String {
    format!(
        "{} by {} at {:.1}s (key '{}')",
        e.reference,
        e.caller,
        e.at_ms as f64 / 1000.0,
        e.key
    )
}

/// (1) No transaction charged twice: by Idempotency-Key (the transaction id
/// when a request carried none), and by user + amount within one story.
fn no_double_charge(ev: &Evidence) -> Verdict {
    let mut by_key: BTreeMap<String, Vec<&Entry>> = BTreeMap::new();
    let mut by_story: BTreeMap<(String, i64), Vec<&Entry>> = BTreeMap::new();
    for c in ev.charges {
        let key = if c.key.is_empty() {
            format!("(no key) {}", c.txn)
        } else {
            c.key.clone()
        };
        by_key.entry(key).or_default().push(c);
        by_story
            .entry((c.user.clone(), c.amount))
            .or_default()
            .push(c);
    }
    let mut violations = Vec::new();
    for (key, cs) in by_key.iter().filter(|(_, cs)| cs.len() > 1) {
        violations.push(format!(
            "Idempotency-Key {key} charged {} times: {}",
            cs.len(),
            cs.iter()
                .map(|c| describe(c))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    let twice_by_story = by_story.values().filter(|cs| cs.len() > 1).count();
    for ((user, amount), cs) in by_story.iter().filter(|(_, cs)| cs.len() > 1) {
        violations.push(format!(
            "user {user} charged {amount} {} times in one story: {}",
            cs.len(),
            cs.iter()
                .map(|c| describe(c))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    let twice_by_key = by_key.values().filter(|cs| cs.len() > 1).count();
    Verdict {
        number: 1,
        name: "no transaction charged twice at the provider",
        counts: format!(
            "{} charges for {} transactions ({} declines); charged twice: {twice_by_key} by Idempotency-Key, {twice_by_story} by user+amount",
            ev.charges.len(),
            by_key.len(),
            ev.declines.len()
        ),
        violations,
        finding: None,
    }
}

/// (2) No payment the provider charged is `failed` in Redis, none it
/// declined is `succeeded`; and each verdict in Redis has the provider's
/// word behind it (`succeeded` a charge, `failed` a decline).
fn redis_agrees_with_provider(ev: &Evidence) -> Verdict {
    let charged: BTreeSet<&str> = ev.charges.iter().map(|c| c.txn.as_str()).collect();
    let declined: BTreeSet<&str> = ev
        .declines
        .iter()
        .map(|c| c.txn.as_str())
        .filter(|t| !charged.contains(t))
        .collect();
    let mut violations = Vec::new();
    let mut tally: BTreeMap<String, u64> = BTreeMap::new();
    for txn in &charged {
        let st = status(ev, txn).unwrap_or("missing");
        *tally.entry(format!("charged/{st}")).or_default() += 1;
        if st == "failed" {
            let charge = ev.charges.iter().find(|c| c.txn == *txn).map(describe);
            violations.push(format!(
                "{}{txn} was charged by the provider ({}) but is failed in Redis (reason: {})",
                ev.key_prefix,
                charge.unwrap_or_default(),
                reason(ev, txn)
            ));
        }
    }
    for txn in &declined {
        let st = status(ev, txn).unwrap_or("missing");
        *tally.entry(format!("declined/{st}")).or_default() += 1;
        if st == "succeeded" {
            violations.push(format!(
                "{}{txn} was declined by the provider but is succeeded in Redis",
                ev.key_prefix
            ));
        }
    }
    for (key, r) in primary(ev) {
        let txn = key.strip_prefix(ev.key_prefix).unwrap_or(key);
        match r.get("status").map(String::as_str) {
            Some("succeeded") if !charged.contains(txn) => violations.push(format!(
                "{key} is succeeded in Redis but the provider never charged it"
            )),
            Some("failed") if !declined.contains(txn) && !charged.contains(txn) => {
                violations.push(format!(
                    "{key} is failed in Redis but the provider never declined it (reason: {})",
                    r.get("reason").map_or("", String::as_str)
                ))
            }
            _ => {}
        }
    }
    let n = |k: &str| tally.get(k).copied().unwrap_or(0);
    Verdict {
        number: 2,
        name: "Redis agrees with the provider (charged is never failed, declined never succeeded)",
        counts: format!(
            "{} charged: {} succeeded, {} unknown, {} pending, {} failed; {} declined: {} failed, {} unknown, {} pending, {} succeeded",
            charged.len(),
            n("charged/succeeded"),
            n("charged/unknown"),
            n("charged/pending"),
            n("charged/failed"),
            declined.len(),
            n("declined/failed"),
            n("declined/unknown"),
            n("declined/pending"),
            n("declined/succeeded"),
        ),
        violations,
        finding: None,
    }
}

/// (3) Every payment acknowledged by WAIT 1 still exists, and so does every
/// payment the provider charged or declined (a charge without its payment
/// is a lost payment).
fn nothing_lost(ev: &Evidence) -> Verdict {
    let records = primary(ev);
    let mut violations = Vec::new();
    let acked: Vec<&Story> = ev.stories.values().filter(|s| s.acknowledged).collect();
    for s in &acked {
        if !records.contains_key(&s.key) {
            violations.push(format!("{} was acknowledged by WAIT 1 and is gone", s.key));
        }
    }
    let mut touched: BTreeMap<&str, (&str, &Entry)> = BTreeMap::new();
    for (what, e) in ev
        .charges
        .iter()
        .map(|e| ("charged", e))
        .chain(ev.declines.iter().map(|e| ("declined", e)))
    {
        touched.entry(e.txn.as_str()).or_insert((what, e));
    }
    for (txn, (what, e)) in &touched {
        let key = format!("{}{txn}", ev.key_prefix);
        if !records.contains_key(&key) {
            let acked = ev.stories.values().any(|s| s.key == key && s.acknowledged);
            violations.push(format!(
                "{key} was {what} by the provider ({}) and has no payment in Redis (acknowledged by WAIT 1: {})",
                describe(e),
                if acked { "yes" } else { "no" }
            ));
        }
    }
    let created = ev.stories.values().filter(|s| s.created > 0).count();
    let recreated = ev.stories.values().filter(|s| s.created > 1).count();
    Verdict {
        number: 3,
        name: "every payment acknowledged by WAIT 1, and every payment the provider saw, still exists",
        counts: format!(
            "{} stories, {} created, {} acknowledged by WAIT 1 (all present: {}); {} created again after a failover lost an unacknowledged write; {} seen by the provider (all present: {}); {} payments in Redis",
            ev.stories.len(),
            created,
            acked.len(),
            acked.iter().all(|s| records.contains_key(&s.key)),
            recreated,
            touched.len(),
            touched
                .keys()
                .all(|t| records.contains_key(&format!("{}{t}", ev.key_prefix))),
            records.len()
        ),
        violations,
        finding: None,
    }
}

/// (4) Every payment is terminal or `unknown`, and every `unknown` one was
/// alerted (Slack saw its key).
fn everything_resolved_or_alerted(ev: &Evidence) -> Verdict {
    let mut by_status: BTreeMap<&str, u64> = BTreeMap::new();
    let mut violations = Vec::new();
    let mut unknown = 0;
    let mut alerted = 0;
    let mut counted = 0;
    for (key, r) in primary(ev) {
        let st = r.get("status").map_or("?", String::as_str);
        *by_status.entry(st).or_default() += 1;
        match st {
            "succeeded" | "failed" => {}
            "unknown" => {
                unknown += 1;
                if ev.alerted_unknown.contains(key) {
                    alerted += 1;
                } else if ev.counted_unknown.contains(key) {
                    counted += 1;
                    if !ev.accept_counted {
                        violations.push(format!(
                            "{key} is unknown and no Slack message named it (only counted in \"… and N more\")"
                        ));
                    }
                } else {
                    violations.push(format!(
                        "{key} is unknown and was never alerted (reason: {})",
                        r.get("reason").map_or("", String::as_str)
                    ));
                }
            }
            other => violations.push(format!(
                "{key} is still {other} after settling (attempts {}, reason: {})",
                r.get("attempts").map_or("?", String::as_str),
                r.get("reason").map_or("", String::as_str)
            )),
        }
    }
    let finding = (counted > 0).then(|| {
        format!(
            "Slack named {alerted} of the {unknown} unknown payments; {counted} only counted (\"… and N more\"): pay-sidecar names each payment in the alert that first reports it unknown, up to 100 per message, and counts the rest, so these turned unknown more than 100 at a time, or the sidecar under test lists fewer (PAY.STUCK lists them)"
        )
    });
    Verdict {
        number: 4,
        name: if ev.accept_counted {
            "every payment is terminal or unknown, and every unknown one was alerted (named, or counted in a message)"
        } else {
            "every payment is terminal or unknown, and every unknown one was named in Slack"
        },
        counts: format!(
            "{} payments: {}; of {unknown} unknown, {alerted} named in Slack, {counted} only counted (\"… and N more\")",
            primary(ev).len(),
            by_status
                .iter()
                .map(|(s, n)| format!("{n} {s}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        violations,
        finding,
    }
}

/// (5) No server, Sentinel or sidecar died except by the nemesis;
/// `pay_index_misses` stayed 0; the index matches the keyspace on every
/// server; the replica holds what the primary holds.
fn processes_and_index(ev: &Evidence) -> Verdict {
    let mut violations: Vec<String> = ev.deaths.to_vec();
    for (server, misses) in ev.index_misses {
        if *misses > 0 {
            violations.push(format!("{server}: pay_index_misses reached {misses}"));
        }
    }
    let mut sizes = Vec::new();
    for s in ev.servers {
        let unresolved: BTreeSet<String> = s
            .records
            .iter()
            .filter(|(_, r)| {
                matches!(
                    r.get("status").map(String::as_str),
                    Some("pending" | "unknown")
                )
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in unresolved.difference(&s.index) {
            violations.push(format!(
                "{} ({}): {k} is unresolved in the keyspace but missing from the index",
                s.name, s.role
            ));
        }
        for k in s.index.difference(&unresolved) {
            violations.push(format!(
                "{} ({}): the index lists {k}, which the keyspace has not unresolved",
                s.name, s.role
            ));
        }
        sizes.push(format!(
            "{} ({}): {} keys, index {} = keyspace {}",
            s.name,
            s.role,
            s.records.len(),
            s.index.len(),
            unresolved.len()
        ));
    }
    if let [p, r] = ev.servers {
        let status = |rec: &Record| rec.get("status").cloned().unwrap_or_default();
        let ps: BTreeMap<&String, String> = p.records.iter().map(|(k, v)| (k, status(v))).collect();
        let rs: BTreeMap<&String, String> = r.records.iter().map(|(k, v)| (k, status(v))).collect();
        if ps != rs {
            let differ: Vec<String> = ps
                .keys()
                .chain(rs.keys())
                .filter(|k| ps.get(*k) != rs.get(*k))
                .take(5)
                .map(|k| format!("{k}: {:?} vs {:?}", ps.get(k), rs.get(k)))
                .collect();
            violations.push(format!(
                "the replica does not hold what the primary holds: {}",
                differ.join("; ")
            ));
        }
    }
    let misses = ev
        .index_misses
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    Verdict {
        number: 5,
        name: "no process died but by the nemesis; pay_index_misses 0; index = keyspace on every server",
        counts: format!(
            "deaths not caused by the nemesis: {}; highest pay_index_misses: {misses}; {}",
            ev.deaths.len(),
            sizes.join("; ")
        ),
        violations,
        finding: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(txn: &str, user: &str, amount: i64, caller: &str) -> Entry {
        Entry {
            at_ms: 1000,
            txn: txn.into(),
            key: txn.into(),
            user: user.into(),
            amount,
            caller: caller.into(),
            reference: format!("ch_{txn}"),
        }
    }

    fn record(status: &str) -> Record {
        [("status".to_string(), status.to_string())].into()
    }

    struct World {
        stories: BTreeMap<u64, Story>,
        charges: Vec<Entry>,
        declines: Vec<Entry>,
        servers: Vec<ServerState>,
        named: BTreeSet<String>,
        counted: BTreeSet<String>,
        accept_counted: bool,
    }

    impl World {
        fn new(records: &[(&str, &str)]) -> World {
            let records: BTreeMap<String, Record> = records
                .iter()
                .map(|(k, st)| (format!("payment:{k}"), record(st)))
                .collect();
            let index = records
                .iter()
                .filter(|(_, r)| matches!(r["status"].as_str(), "pending" | "unknown"))
                .map(|(k, _)| k.clone())
                .collect::<BTreeSet<_>>();
            let server = |name: &str, role: &str| ServerState {
                name: name.into(),
                role: role.into(),
                records: records.clone(),
                index: index.clone(),
            };
            World {
                stories: BTreeMap::new(),
                charges: Vec::new(),
                declines: Vec::new(),
                servers: vec![server("a", "master"), server("b", "slave")],
                named: BTreeSet::new(),
                counted: BTreeSet::new(),
                accept_counted: false,
            }
        }

        fn check(&self) -> Vec<Verdict> {
            check(&Evidence {
                stories: &self.stories,
                charges: &self.charges,
                declines: &self.declines,
                alerted_unknown: &self.named,
                counted_unknown: &self.counted,
                accept_counted: self.accept_counted,
                servers: &self.servers,
                deaths: &[],
                index_misses: &BTreeMap::new(),
                key_prefix: "payment:",
            })
        }
    }

    fn broken(verdicts: &[Verdict]) -> Vec<u8> {
        verdicts
            .iter()
            .filter(|v| !v.holds())
            .map(|v| v.number)
            .collect()
    }

    #[test]
    fn a_clean_history_passes() {
        let mut w = World::new(&[("t1", "succeeded"), ("t2", "failed"), ("t3", "unknown")]);
        w.charges.push(entry("t1", "u1", 100, "app"));
        w.declines.push(entry("t2", "u2", 113, "sidecar-1"));
        w.named.insert("payment:t3".into());
        assert_eq!(broken(&w.check()), Vec::<u8>::new());
    }

    #[test]
    fn a_second_charge_of_one_key_is_a_double_charge() {
        let mut w = World::new(&[("t1", "succeeded")]);
        w.charges.push(entry("t1", "u1", 100, "app"));
        w.charges.push(entry("t1", "u1", 100, "sidecar-2"));
        let v = w.check();
        assert_eq!(broken(&v), [1]);
        assert!(
            v[0].violations[0].contains("charged 2 times"),
            "{:?}",
            v[0].violations
        );
    }

    #[test]
    fn a_charged_payment_marked_failed_is_caught() {
        let mut w = World::new(&[("t1", "failed")]);
        w.charges.push(entry("t1", "u1", 100, "app"));
        assert_eq!(broken(&w.check()), [2]);
    }

    #[test]
    fn failed_without_a_decline_is_caught() {
        let w = World::new(&[("t1", "failed")]);
        assert_eq!(broken(&w.check()), [2]);
    }

    #[test]
    fn a_charge_without_its_payment_is_a_lost_payment() {
        let mut w = World::new(&[]);
        w.charges.push(entry("t9", "u9", 100, "sidecar-1"));
        assert_eq!(broken(&w.check()), [3]);
    }

    #[test]
    fn an_acknowledged_payment_that_is_gone_is_caught() {
        let mut w = World::new(&[]);
        w.stories.insert(
            1,
            Story {
                key: "payment:t1".into(),
                acknowledged: true,
                ..Story::default()
            },
        );
        assert_eq!(broken(&w.check()), [3]);
    }

    #[test]
    fn pending_after_settling_and_unalerted_unknown_are_caught() {
        let w = World::new(&[("t1", "pending"), ("t2", "unknown")]);
        let v = w.check();
        assert_eq!(broken(&v), [4]);
        assert_eq!(v[3].violations.len(), 2);
    }

    #[test]
    fn an_unknown_payment_only_counted_passes_only_when_counted_is_accepted() {
        let mut w = World::new(&[("t1", "unknown"), ("t2", "unknown")]);
        w.named.insert("payment:t1".into());
        w.counted.insert("payment:t2".into());
        let v = w.check();
        assert_eq!(broken(&v), [4]);
        assert!(
            v[3].violations[0].contains("no Slack message named it"),
            "{:?}",
            v[3].violations
        );
        w.accept_counted = true;
        let v = w.check();
        assert_eq!(broken(&v), Vec::<u8>::new());
        let finding = v[3].finding.as_deref().unwrap_or_default();
        assert!(finding.contains("1 only counted"), "{finding}");
    }

    #[test]
    fn an_index_that_differs_from_the_keyspace_is_caught() {
        let mut w = World::new(&[("t1", "unknown")]);
        w.named.insert("payment:t1".into());
        w.servers[1].index.clear();
        assert_eq!(broken(&w.check()), [5]);
    }
}
