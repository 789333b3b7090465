//! The report (CHAOS.md): settings, seed and the command to replay the run,
//! the operations, the faults injected by kind, and each invariant with its
//! counts.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::Path;

use crate::checker::Verdict;
use crate::history::Op;
use crate::nemesis::{self, Done};
use crate::provider::{Fault, Window, KEY_RETENTION, SLOW};
use crate::settings::{self, Follow, Options};

pub struct Facts<'a> {
    pub opts: &'a Options,
    pub seed: u64,
    pub server_version: String,
    pub follow: Follow,
    pub clients_ms: u64,
    pub settle_ms: u64,
    pub total_ms: u64,
    pub ops: &'a [Op],
    pub stories: usize,
    pub provider_counts: &'a BTreeMap<String, u64>,
    pub sidecar_outcomes: &'a BTreeMap<String, u64>,
    pub windows: &'a [Window],
    pub faults: &'a [Done],
    pub failovers: u32,
    pub harness_restarts: u32,
    pub slack_messages: usize,
    pub verdicts: &'a [Verdict],
    pub out_dir: &'a Path,
}

fn secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// An operation's result, as a class: `created`, `duplicate`, `error
/// MISMATCH`, `error (connection)`, ...
fn class(op: &Op) -> String {
    let r = op.result.as_str();
    if let Some(e) = r.strip_prefix("error: ") {
        let code = e.split_whitespace().next().unwrap_or("");
        if !code.is_empty() && code.chars().all(|c| c.is_ascii_uppercase()) {
            return format!("error {code}");
        }
        return "error (timeout or connection)".into();
    }
    match op.kind {
        "wait" => format!("{} replica(s)", r),
        "charge" => r.split([' ', ':']).next().unwrap_or("").to_string(),
        "update" => r.to_string(),
        "crash" => r.to_string(),
        _ => r.split(' ').next().unwrap_or("").to_string(),
    }
}

fn tally(ops: &[Op]) -> BTreeMap<&'static str, BTreeMap<String, u64>> {
    let mut t: BTreeMap<&'static str, BTreeMap<String, u64>> = BTreeMap::new();
    for op in ops {
        *t.entry(op.kind).or_default().entry(class(op)).or_default() += 1;
    }
    t
}

fn joined(m: &BTreeMap<String, u64>) -> String {
    m.iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn render(f: &Facts) -> String {
    let pass = f.verdicts.iter().all(Verdict::holds);
    let mut s = String::new();
    let _ = writeln!(s, "# Chaos run: redis-pay under a nemesis\n");
    let _ = writeln!(
        s,
        "Written by `make chaos` (`target/release/pay-chaos`); issue 14. {}\n",
        if pass {
            "**PASS: every invariant holds.**".to_string()
        } else {
            format!(
                "**FAIL: {} invariant(s) violated.**",
                f.verdicts.iter().filter(|v| !v.holds()).count()
            )
        }
    );
    let _ = writeln!(
        s,
        "Replay: `CHAOS_SEED={} CHAOS_SECONDS={} make chaos` (the same schedule of faults, provider windows and client choices; thread timing differs from run to run).\n",
        f.seed, f.opts.seconds
    );

    let _ = writeln!(s, "## Settings\n");
    let _ = writeln!(s, "| | |\n| --- | --- |");
    let _ = writeln!(
        s,
        "| run | {} of clients (faults from {} to {}), then {} settling; {} in all |",
        secs(f.clients_ms),
        secs(settings::WARMUP.as_millis() as u64),
        secs((f.opts.seconds - f.opts.quiet().as_secs()) * 1000),
        secs(f.settle_ms),
        secs(f.total_ms)
    );
    let _ = writeln!(s, "| seed | {} |", f.seed);
    let _ = writeln!(
        s,
        "| servers | {}: a primary and a replica, `appendonly yes`, `appendfsync always`, `min-replicas-to-write {}`, `min-replicas-max-lag {}`, module arguments `{}` |",
        f.server_version,
        f.opts.min_replicas_to_write,
        settings::MIN_REPLICAS_MAX_LAG,
        settings::MODULE_ARGS.join(" ")
    );
    let _ = writeln!(
        s,
        "| Sentinel | 3 × redis-sentinel, quorum 2, `down-after-milliseconds {}`, `failover-timeout {}` |",
        settings::DOWN_AFTER_MS,
        settings::FAILOVER_TIMEOUT_MS
    );
    let _ = writeln!(
        s,
        "| sidecars | 2 × pay-sidecar `{}`; failovers followed {} |",
        settings::SIDECAR_ARGS
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(" "),
        match f.follow {
            Follow::Sentinel => "by the sidecars themselves (`--sentinel`, `--sentinel-master pay`)",
            _ => "by the harness: the sidecars point at the primary the Sentinels name, and are restarted (SIGTERM) when it changes",
        }
    );
    let _ = writeln!(
        s,
        "| clients | {} application threads; 25% double clicks (concurrent), PAY.CACHE retried after timeouts, `WAIT 1 {}` up to {} times before charging, provider timeout {} ms, 40% of lost charges retried once with the same key, 4% crash before charging, 12% before PAY.UPDATE |",
        f.opts.clients,
        settings::WAIT_MS,
        settings::WAIT_TRIES,
        settings::APP_HTTP_TIMEOUT.as_millis()
    );
    let _ = writeln!(
        s,
        "| provider | keeps Idempotency-Keys {} s after answering (then a POST is a new charge); at random per call: 2% 503, 2% slow ({}-{} ms), 3% reply dropped after processing; amounts ending in 13 declined (402) |\n",
        KEY_RETENTION.as_secs(),
        SLOW.0,
        SLOW.1
    );

    let _ = writeln!(s, "## Operations\n");
    let _ = writeln!(s, "| operation | count | results |\n| --- | ---: | --- |");
    let t = tally(f.ops);
    let _ = writeln!(s, "| stories (checkouts) | {} | |", f.stories);
    for (kind, label) in [
        ("cache", "PAY.CACHE"),
        ("wait", "WAIT 1"),
        ("charge", "POST /payments by the application"),
        ("update", "PAY.UPDATE by the application"),
        ("crash", "application crashes (planned)"),
    ] {
        if let Some(m) = t.get(kind) {
            let _ = writeln!(
                s,
                "| {label} | {} | {} |",
                m.values().sum::<u64>(),
                joined(m)
            );
        }
    }
    let provider_total: u64 = f
        .provider_counts
        .iter()
        .filter(|(k, _)| k.starts_with("GET ") || k.starts_with("POST "))
        .map(|(_, n)| n)
        .sum();
    let _ = writeln!(
        s,
        "| provider requests | {provider_total} | {} |",
        joined(f.provider_counts)
    );
    let _ = writeln!(
        s,
        "| sidecar decisions (from their logs) | {} | {} |",
        f.sidecar_outcomes.values().sum::<u64>(),
        joined(f.sidecar_outcomes)
    );
    let _ = writeln!(s, "| Slack messages | {} | |\n", f.slack_messages);

    let _ = writeln!(s, "## Faults injected\n");
    let _ = writeln!(s, "| fault | scheduled | injected |\n| --- | ---: | ---: |");
    for (kind, (scheduled, injected)) in nemesis::tally(f.faults) {
        let mid_call = f
            .faults
            .iter()
            .filter(|d| d.kind == kind && d.injected && d.detail.contains("mid-call"))
            .count();
        let note = if mid_call > 0 {
            format!(" ({mid_call} mid-call)")
        } else {
            String::new()
        };
        let _ = writeln!(s, "| {} | {scheduled} | {injected}{note} |", kind.name());
    }
    let mut windows: BTreeMap<Fault, (u32, u64)> = BTreeMap::new();
    for w in f.windows {
        let e = windows.entry(w.fault).or_default();
        e.0 += 1;
        e.1 += w.end_ms - w.start_ms;
    }
    for (fault, (n, ms)) in windows {
        let _ = writeln!(s, "| {} ({} in all) | {n} | {n} |", fault.name(), secs(ms));
    }
    let _ = writeln!(
        s,
        "\nFailovers seen (the Sentinels named a new primary): {}. Sidecar restarts by the harness to follow them: {}. A fault on a server waits until the system is whole again (one failure at a time); one that cannot strike before the fault window ends is skipped (scheduled, not injected).\n",
        f.failovers, f.harness_restarts
    );

    let _ = writeln!(s, "## Invariants\n");
    let _ = writeln!(
        s,
        "| # | invariant | result | counts |\n| --- | --- | --- | --- |"
    );
    for v in f.verdicts {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            v.number,
            v.name,
            if v.holds() {
                "holds".to_string()
            } else {
                format!("**VIOLATED ({})**", v.violations.len())
            },
            v.counts
        );
    }
    for v in f.verdicts {
        if let Some(finding) = &v.finding {
            let _ = writeln!(s, "\nFinding (invariant {}): {finding}.", v.number);
        }
    }
    for v in f.verdicts.iter().filter(|v| !v.holds()) {
        let _ = writeln!(s, "\n### Invariant {} violated: {}\n", v.number, v.name);
        for line in v.violations.iter().take(20) {
            let _ = writeln!(s, "- {line}");
        }
        if v.violations.len() > 20 {
            let _ = writeln!(s, "- … and {} more", v.violations.len() - 20);
        }
    }
    let _ = writeln!(
        s,
        "\nThe run's files are in `{}/`: `history.jsonl` (every client operation), `ledger.jsonl` (every charge and decline), `slack.jsonl`, `faults.jsonl`, and each process's log.",
        f.out_dir.display()
    );
    s
}

/// Counts the sidecars' decisions from their logs (restarts append).
pub fn sidecar_outcomes(logs: &[std::path::PathBuf]) -> BTreeMap<String, u64> {
    let texts: Vec<String> = logs
        .iter()
        .map(|log| std::fs::read_to_string(log).unwrap_or_default())
        .collect();
    outcomes_in(texts.iter().map(String::as_str))
}

/// The decisions in the sidecars' log texts. A payment's first `unknown`
/// is where it became unknown; its later ones are asks about an unknown
/// payment (its attempts alone cannot say: a claim no replica took, with
/// `--wait-replicas`, counts an attempt without asking the provider).
fn outcomes_in<'t>(texts: impl Iterator<Item = &'t str>) -> BTreeMap<String, u64> {
    let patterns = [
        (" succeeded ref=", "succeeded"),
        (" failed: ", "failed"),
        ("still pending, next try", "retry"),
        ("outcome unknown after", "unknown"),
        ("another worker claimed it since", "fenced"),
        ("resolved elsewhere meanwhile", "resolved elsewhere"),
        ("lease too short to send it", "abandoned"),
        ("left for a later claim", "claim not on a replica, left"),
    ];
    let mut counts = BTreeMap::new();
    let mut unknown: BTreeSet<&str> = BTreeSet::new();
    for text in texts {
        for line in text.lines() {
            let Some(txn) = line
                .split_once("txn=")
                .and_then(|(_, rest)| rest.split(' ').next())
            else {
                continue;
            };
            let Some((_, name)) = patterns.iter().find(|(p, _)| line.contains(p)) else {
                continue;
            };
            let name = match *name {
                "unknown" if !unknown.insert(txn) => "unknown, asked again",
                n => n,
            };
            *counts.entry(name.to_string()).or_default() += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::outcomes_in;

    #[test]
    fn a_payment_becomes_unknown_once_and_is_asked_again_after() {
        let one = "\
WARN txn=payment:t1 attempt=1 claim not on 1 replica(s) within 500ms; left for a later claim
WARN txn=payment:t1 attempt=5 outcome unknown after 5 attempts: provider timed out; asked again in 5s
INFO txn=payment:t2 attempt=1 succeeded ref=ch_2";
        let two =
            "WARN txn=payment:t1 attempt=6 outcome unknown after 6 attempts: x; asked again in 5s";
        let counts = outcomes_in([one, two].into_iter());
        let get = |k: &str| counts.get(k).copied().unwrap_or(0);
        assert_eq!(get("unknown"), 1);
        assert_eq!(get("unknown, asked again"), 1);
        assert_eq!(get("claim not on a replica, left"), 1);
        assert_eq!(get("succeeded"), 1);
    }
}
