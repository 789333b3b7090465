//! Property tests over everything a client or a data file can feed the pure
//! core: argument parsing, record decoding and the state machine. Thousands
//! of generated cases per property; none may panic.

use proptest::collection::vec;
use proptest::prelude::*;

use crate::args;
use crate::codec;
use crate::record::{Fields, Record, Status, Update, MAX_TIMESTAMP_MS};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 4096,
        ..ProptestConfig::default()
    }
}

/// Fields the parsers accept: printable, no control characters, at most
/// `max` bytes (`é` takes two).
fn token(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[a-zA-Z0-9_:.@ é-]{{1,{max}}}"))
        .unwrap()
        .prop_filter("fits the byte limit", move |s| s.len() <= max)
}

/// Any status.
pub fn status() -> impl Strategy<Value = Status> {
    proptest::sample::select(Status::ALL.to_vec())
}

/// Any record the commands could have made, under the key it was created
/// under or moved to another (RENAME, COPY: any bytes Redis allows).
fn record() -> impl Strategy<Value = Record> {
    (created(), proptest::option::of(vec(any::<u8>(), 0..40))).prop_map(|(mut r, moved)| {
        if let Some(key) = moved {
            r.set_key(&key);
        }
        r
    })
}

/// Any record the commands could have made, under the key it was made.
fn created() -> impl Strategy<Value = Record> {
    (
        token(128),
        0..=i64::MAX,
        "[A-Z]{3}",
        status(),
        any::<bool>(),
        0..=MAX_TIMESTAMP_MS - 1_000_000,
        0..=1_000_000i64,
        any::<u32>(),
        proptest::string::string_regex("[ -~é]{0,64}").unwrap(),
        proptest::option::of(token(64)),
        proptest::option::of((token(32), any::<i64>())),
        1..=315_360_000u32,
    )
        .prop_map(
            |(
                user,
                amount,
                cur,
                status,
                stale,
                created,
                later,
                attempts,
                reason,
                reference,
                lease,
                ttl_secs,
            )| {
                let pending = !status.is_terminal();
                let lease = lease.filter(|(_, until)| pending && *until != 0);
                let text = Fields {
                    key: b"txn_1",
                    origin: b"",
                    user_id: &user,
                    reason: &reason,
                    provider_ref: reference.as_deref().unwrap_or_default(),
                    lease_owner: lease.as_ref().map_or("", |(owner, _)| owner),
                    lease_until: lease.as_ref().map_or(0, |(_, until)| *until),
                    ttl_secs,
                };
                let currency = cur.as_bytes().try_into().unwrap_or(*b"USD");
                let mut r = Record::with_text(text, amount, currency, created);
                r.status = status;
                r.stale = stale && pending;
                r.updated_at = created + later;
                r.attempts = attempts;
                r
            },
        )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_record_round_trips(r in record()) {
        prop_assert_eq!(codec::decode(r.key(), &codec::encode(&r)), Ok(r));
    }

    #[test]
    fn decoding_any_bytes_never_panics_and_accepts_only_canonical_forms(bytes in vec(any::<u8>(), 0..300)) {
        // Version 1 is read but written as version 2.
        if let (Ok(r), Some(&codec::VERSION)) = (codec::decode(b"k", &bytes), bytes.first()) {
            prop_assert_eq!(codec::encode(&r), bytes);
        }
    }

    #[test]
    fn any_decodable_record_renders_as_json(r in record(), created in any::<i64>(), later in any::<i64>()) {
        // Whatever timestamps a forged blob carries, either the decoder
        // refuses it or PAY.CHECK JSON renders it: it never panics.
        let mut forged = r.clone();
        forged.created_at = created;
        forged.updated_at = later;
        if let Ok(decoded) = codec::decode(b"k", &codec::encode(&forged)) {
            let json: serde_json::Value = serde_json::from_str(&decoded.to_json(b"")).unwrap();
            prop_assert_eq!(json["created_at"].as_i64(), Some(created));
        }
        let json: serde_json::Value = serde_json::from_str(&r.to_json(b"")).unwrap();
        prop_assert_eq!(json["amount"].as_i64(), Some(r.amount));
    }

    #[test]
    fn a_corrupted_record_never_panics(r in record(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = codec::encode(&r);
        let i = at.index(bytes.len());
        bytes[i] = byte;
        if let (Ok(r), Some(&codec::VERSION)) = (codec::decode(b"k", &bytes), bytes.first()) {
            prop_assert_eq!(codec::encode(&r), bytes);
        }
    }

    #[test]
    fn cache_arguments_never_panic_and_what_passes_is_valid(argv in vec(vec(any::<u8>(), 0..300), 0..8)) {
        let argv: Vec<&[u8]> = argv.iter().map(Vec::as_slice).collect();
        if let Ok(a) = args::parse_cache(&argv) {
            prop_assert!((1..=255).contains(&a.key.len()));
            prop_assert!((1..=128).contains(&a.user_id.len()));
            prop_assert!(a.amount >= 0);
            prop_assert!(a.currency.iter().all(u8::is_ascii_uppercase));
            prop_assert!(a.ttl_secs.is_none_or(|t| t >= 1));
        }
        let _ = args::parse_check(&argv);
        let _ = args::parse_update(&argv);
        let _ = args::parse_stuck(&argv);
        let _ = args::parse_claim(&argv);
        let _ = args::parse_load(&argv);
    }

    #[test]
    fn amounts_parse_exactly_as_written(n in 0..=i64::MAX) {
        prop_assert_eq!(args::parse_amount(n.to_string().as_bytes()), Ok(n));
        for bad in [format!("{}.0", n), format!("+{}", n), format!("0{}", n), format!("{} ", n)] {
            let parsed = args::parse_amount(bad.as_bytes());
            prop_assert!(parsed.is_err(), "accepted {:?}", bad);
        }
    }

    #[test]
    fn a_terminal_status_never_changes(r in record(), steps in vec((status(), any::<bool>()), 1..12)) {
        let mut r = r;
        let mut settled: Option<Status> = r.status.is_terminal().then_some(r.status);
        for (i, (to, with_reason)) in steps.into_iter().enumerate() {
            let before = r.clone();
            let update = Update { status: to, reason: with_reason.then_some("why"), provider_ref: None, ..Default::default() };
            let result = r.apply(&update, i as i64);
            match settled {
                Some(s) => {
                    prop_assert_eq!(&r, &before, "a settled record changed");
                    prop_assert_eq!(result.is_ok(), to == s);
                }
                None => {
                    prop_assert!(result.is_ok());
                    prop_assert!(r.updated_at >= before.updated_at);
                    if to.is_terminal() {
                        prop_assert!(r.lease().is_none() && !r.stale);
                        settled = Some(to);
                    }
                }
            }
        }
    }
}
