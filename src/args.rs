//! Argument parsing and validation for every PAY.* command. Plain Rust: the
//! Redis glue hands over the arguments after the command name as byte slices.

use crate::error::PayError;
use crate::record::{Status, Update};

use pay_proto::limits::{
    DEFAULT_STUCK_COUNT, MAX_CONSUMER_LEN, MAX_KEY_LEN, MAX_LEASE_MS, MAX_REASON_LEN, MAX_REF_LEN,
    MAX_RETRY_MS, MAX_STUCK_COUNT, MAX_TTL_SECS, MAX_USER_ID_LEN,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheArgs<'a> {
    pub key: &'a [u8],
    pub user_id: &'a str,
    pub amount: i64,
    pub currency: [u8; 3],
    pub ttl_secs: Option<i64>,
    /// Reply with the outcome and the status only, not the whole record.
    pub brief: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckArgs<'a> {
    pub key: &'a [u8],
    pub json: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateArgs<'a> {
    pub key: &'a [u8],
    pub update: Update<'a>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StuckArgs {
    /// None: the configured `pay.stale-after-ms`.
    pub older_ms: Option<i64>,
    pub count: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimArgs<'a> {
    pub consumer: &'a str,
    pub lease_ms: i64,
    /// None: records flagged stale, and those older than `pay.stale-after-ms`.
    pub older_ms: Option<i64>,
    pub count: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadArgs<'a> {
    pub key: &'a [u8],
    pub blob: &'a [u8],
    /// Absolute expiry in Unix ms.
    pub expire_at: Option<i64>,
}

/// `PAY.CACHE key user_id amount currency [TTL seconds] [BRIEF]`
pub fn parse_cache<'a>(args: &[&'a [u8]]) -> Result<CacheArgs<'a>, PayError> {
    let [key, user_id, amount, currency, rest @ ..] = args else {
        return Err(PayError::Arity("PAY.CACHE"));
    };
    let key = parse_key(key)?;
    let user_id = parse_text("user_id", user_id, 1, MAX_USER_ID_LEN)?;
    let amount = parse_amount(amount)?;
    let currency = parse_currency(currency)?;
    let mut ttl_secs = None;
    let mut brief = false;
    let mut opts = Options::new(rest);
    while let Some(name) = opts.next_name()? {
        match name.upper() {
            b"TTL" => set_once(&mut ttl_secs, "TTL", opts.int("TTL", 1, MAX_TTL_SECS)?)?,
            b"BRIEF" => set_once(&mut brief, "BRIEF", true)?,
            _ => return Err(unknown_option(name.raw)),
        }
    }
    Ok(CacheArgs {
        key,
        user_id,
        amount,
        currency,
        ttl_secs,
        brief,
    })
}

/// `PAY.CHECK key [JSON]`
pub fn parse_check<'a>(args: &[&'a [u8]]) -> Result<CheckArgs<'a>, PayError> {
    let [key, rest @ ..] = args else {
        return Err(PayError::Arity("PAY.CHECK"));
    };
    // Any key Redis lets a payment live under (RENAME, RESTORE): the
    // key rules bind only PAY.CACHE, where payments are created.
    let key: &[u8] = key;
    let mut json = false;
    let mut opts = Options::new(rest);
    while let Some(name) = opts.next_name()? {
        match name.upper() {
            b"JSON" => set_once(&mut json, "JSON", true)?,
            _ => return Err(unknown_option(name.raw)),
        }
    }
    Ok(CheckArgs { key, json })
}

/// `PAY.UPDATE key status [REASON text] [REF ref] [RETRY ms] [FENCE n]`
pub fn parse_update<'a>(args: &[&'a [u8]]) -> Result<UpdateArgs<'a>, PayError> {
    let [key, status, rest @ ..] = args else {
        return Err(PayError::Arity("PAY.UPDATE"));
    };
    // Any key Redis lets a payment live under (RENAME, RESTORE): the
    // key rules bind only PAY.CACHE, where payments are created.
    let key: &[u8] = key;
    let status = Status::parse(status).ok_or_else(|| {
        PayError::arg("status must be one of pending, succeeded, failed, unknown")
    })?;
    let mut reason = None;
    let mut provider_ref = None;
    let mut retry_ms = None;
    let mut fence = None;
    let mut opts = Options::new(rest);
    while let Some(name) = opts.next_name()? {
        match name.upper() {
            b"REASON" => {
                let v = opts.value("REASON")?;
                set_once(&mut reason, "REASON", parse_reason(v)?)?
            }
            b"REF" => {
                let v = opts.value("REF")?;
                set_once(
                    &mut provider_ref,
                    "REF",
                    parse_text("REF", v, 1, MAX_REF_LEN)?,
                )?
            }
            b"RETRY" => set_once(&mut retry_ms, "RETRY", opts.int("RETRY", 0, MAX_RETRY_MS)?)?,
            b"FENCE" => {
                let n = opts.int("FENCE", 0, u32::MAX.into())?;
                set_once(&mut fence, "FENCE", u32::try_from(n).unwrap_or(u32::MAX))?
            }
            _ => return Err(unknown_option(name.raw)),
        }
    }
    if retry_ms.is_some() && status.is_terminal() {
        return Err(PayError::arg(
            "RETRY goes with pending or unknown: a resolved payment is never retried",
        ));
    }
    Ok(UpdateArgs {
        key,
        update: Update {
            status,
            reason,
            provider_ref,
            retry_ms,
            fence,
        },
    })
}

/// `PAY.STUCK [OLDER ms] [COUNT n]`
pub fn parse_stuck(args: &[&[u8]]) -> Result<StuckArgs, PayError> {
    let mut older_ms = None;
    let mut count = None;
    let mut opts = Options::new(args);
    while let Some(name) = opts.next_name()? {
        match name.upper() {
            b"OLDER" => set_once(&mut older_ms, "OLDER", opts.int("OLDER", 0, i64::MAX)?)?,
            b"COUNT" => set_once(&mut count, "COUNT", parse_count(&mut opts)?)?,
            b"CLAIM" | b"LEASE" => {
                return Err(PayError::arg(
                    "PAY.STUCK only lists; claims moved to PAY.CLAIM consumer LEASE ms [OLDER ms] [COUNT n]",
                ))
            }
            _ => return Err(unknown_option(name.raw)),
        }
    }
    Ok(StuckArgs {
        older_ms,
        count: count.unwrap_or(DEFAULT_STUCK_COUNT),
    })
}

/// `PAY.CLAIM consumer LEASE ms [OLDER ms] [COUNT n]`
pub fn parse_claim<'a>(args: &[&'a [u8]]) -> Result<ClaimArgs<'a>, PayError> {
    let [consumer, rest @ ..] = args else {
        return Err(PayError::Arity("PAY.CLAIM"));
    };
    let consumer = parse_text("consumer", consumer, 1, MAX_CONSUMER_LEN)?;
    let mut lease_ms = None;
    let mut older_ms = None;
    let mut count = None;
    let mut opts = Options::new(rest);
    while let Some(name) = opts.next_name()? {
        match name.upper() {
            b"LEASE" => set_once(&mut lease_ms, "LEASE", opts.int("LEASE", 1, MAX_LEASE_MS)?)?,
            b"OLDER" => set_once(&mut older_ms, "OLDER", opts.int("OLDER", 0, i64::MAX)?)?,
            b"COUNT" => set_once(&mut count, "COUNT", parse_count(&mut opts)?)?,
            _ => return Err(unknown_option(name.raw)),
        }
    }
    let lease_ms = lease_ms.ok_or_else(|| PayError::arg("LEASE ms is required"))?;
    Ok(ClaimArgs {
        consumer,
        lease_ms,
        older_ms,
        count: count.unwrap_or(1),
    })
}

fn parse_count(opts: &mut Options<'_, '_>) -> Result<usize, PayError> {
    let n = opts.int("COUNT", 1, MAX_STUCK_COUNT as i64)?;
    Ok(usize::try_from(n).unwrap_or(MAX_STUCK_COUNT))
}

/// `PAY.LOAD key blob [PXAT unix-ms]` (replication and AOF only)
pub fn parse_load<'a>(args: &[&'a [u8]]) -> Result<LoadArgs<'a>, PayError> {
    let [key, blob, rest @ ..] = args else {
        return Err(PayError::Arity("PAY.LOAD"));
    };
    // Key rules bind the application (PAY.CACHE), not records in transit:
    // any name Redis lets a payment live under is replayed as it is.
    let key: &'a [u8] = key;
    let mut expire_at = None;
    let mut opts = Options::new(rest);
    while let Some(name) = opts.next_name()? {
        match name.upper() {
            b"PXAT" => set_once(&mut expire_at, "PXAT", opts.int("PXAT", 1, i64::MAX)?)?,
            _ => return Err(unknown_option(name.raw)),
        }
    }
    Ok(LoadArgs {
        key,
        blob,
        expire_at,
    })
}

/// A payment key: 1..=255 bytes of UTF-8 without control characters.
pub fn parse_key(key: &[u8]) -> Result<&[u8], PayError> {
    parse_text("key", key, 1, MAX_KEY_LEN).map(str::as_bytes)
}

/// Minor units: a canonical non-negative decimal integer that fits in i64.
pub fn parse_amount(s: &[u8]) -> Result<i64, PayError> {
    parse_int(s).ok_or_else(|| {
        PayError::arg("amount must be a non-negative integer in minor units (e.g. 1000 for 10.00)")
    })
}

/// Three ASCII letters, returned upper-case.
pub fn parse_currency(s: &[u8]) -> Result<[u8; 3], PayError> {
    match s {
        [a, b, c] if s.iter().all(u8::is_ascii_alphabetic) => Ok([
            a.to_ascii_uppercase(),
            b.to_ascii_uppercase(),
            c.to_ascii_uppercase(),
        ]),
        _ => Err(PayError::arg(
            "currency must be three ASCII letters (ISO 4217, e.g. USD)",
        )),
    }
}

/// Free text for REASON: UTF-8, at most 1024 bytes, may be empty.
pub fn parse_reason(s: &[u8]) -> Result<&str, PayError> {
    let text = std::str::from_utf8(s).map_err(|_| PayError::arg("REASON must be UTF-8 text"))?;
    if text.len() > MAX_REASON_LEN {
        return Err(PayError::arg(format!(
            "REASON must be at most {MAX_REASON_LEN} bytes"
        )));
    }
    Ok(text)
}

/// A token: UTF-8, `min..=max` bytes, no control characters.
pub fn parse_text<'a>(
    what: &str,
    s: &'a [u8],
    min: usize,
    max: usize,
) -> Result<&'a str, PayError> {
    if s.len() < min || s.len() > max {
        return Err(PayError::arg(format!(
            "{what} must be {min} to {max} bytes long"
        )));
    }
    let text =
        std::str::from_utf8(s).map_err(|_| PayError::arg(format!("{what} must be UTF-8 text")))?;
    if text.chars().any(char::is_control) {
        return Err(PayError::arg(format!(
            "{what} must not contain control characters"
        )));
    }
    Ok(text)
}

/// A canonical non-negative decimal: digits only, no sign, no leading zero.
pub fn parse_int(s: &[u8]) -> Option<i64> {
    let canonical = !s.is_empty()
        && s.len() <= 19
        && s.iter().all(u8::is_ascii_digit)
        && (s == b"0" || s.first() != Some(&b'0'));
    if !canonical {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

fn set_once<S: OptionSlot<T>, T>(slot: &mut S, name: &str, value: T) -> Result<(), PayError> {
    slot.put(name, value)
}

/// Options may be given once each.
trait OptionSlot<T> {
    fn put(&mut self, name: &str, value: T) -> Result<(), PayError>;
}

impl<T> OptionSlot<T> for Option<T> {
    fn put(&mut self, name: &str, value: T) -> Result<(), PayError> {
        if self.is_some() {
            return Err(PayError::arg(format!("{name} given more than once")));
        }
        *self = Some(value);
        Ok(())
    }
}

/// A flag option is a `bool` that may also be set only once.
impl OptionSlot<bool> for bool {
    fn put(&mut self, name: &str, value: bool) -> Result<(), PayError> {
        if *self {
            return Err(PayError::arg(format!("{name} given more than once")));
        }
        *self = value;
        Ok(())
    }
}

/// An option name as given, and upper-cased for matching.
#[derive(Clone, Copy)]
struct Name<'a> {
    raw: &'a [u8],
    upper: [u8; 8],
}

impl Name<'_> {
    /// Names longer than any option come back empty, which matches nothing.
    fn upper(&self) -> &[u8] {
        self.upper.get(..self.raw.len()).unwrap_or_default()
    }
}

/// Walks `NAME [value]` options; names match case-insensitively.
struct Options<'a, 'b> {
    rest: &'b [&'a [u8]],
}

impl<'a, 'b> Options<'a, 'b> {
    fn new(rest: &'b [&'a [u8]]) -> Self {
        Options { rest }
    }

    fn next_name(&mut self) -> Result<Option<Name<'a>>, PayError> {
        let Some((raw, rest)) = self.rest.split_first() else {
            return Ok(None);
        };
        self.rest = rest;
        let mut upper = [0; 8];
        if let Some(dst) = upper.get_mut(..raw.len()) {
            dst.copy_from_slice(raw);
            dst.make_ascii_uppercase();
        }
        Ok(Some(Name { raw, upper }))
    }

    fn value(&mut self, name: &str) -> Result<&'a [u8], PayError> {
        let Some((v, rest)) = self.rest.split_first() else {
            return Err(PayError::arg(format!("{name} needs a value")));
        };
        self.rest = rest;
        Ok(v)
    }

    fn int(&mut self, name: &str, min: i64, max: i64) -> Result<i64, PayError> {
        let v = self.value(name)?;
        match parse_int(v) {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(PayError::arg(format!(
                "{name} must be an integer from {min} to {max}"
            ))),
        }
    }
}

fn unknown_option(name: &[u8]) -> PayError {
    let shown: String = String::from_utf8_lossy(name)
        .chars()
        .take(32)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    PayError::arg(format!("unknown option '{shown}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg<T: std::fmt::Debug>(r: Result<T, PayError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn cache_parses_all_fields_and_uppercases_currency() {
        let a = parse_cache(&[b"txn_1", b"u1", b"1000", b"usd", b"ttl", b"60"]).unwrap();
        assert_eq!(a.key, b"txn_1");
        assert_eq!(a.user_id, "u1");
        assert_eq!(a.amount, 1000);
        assert_eq!(a.currency, *b"USD");
        assert_eq!(a.ttl_secs, Some(60));
        let a = parse_cache(&[b"k", b"u", b"0", b"EUR"]).unwrap();
        assert_eq!((a.amount, a.ttl_secs), (0, None));
    }

    #[test]
    fn cache_rejects_wrong_arity() {
        assert!(msg(parse_cache(&[b"k", b"u", b"1"])).starts_with("ERR wrong number"));
        assert!(msg(parse_cache(&[])).contains("'PAY.CACHE'"));
    }

    #[test]
    fn amount_rejects_floats_signs_spaces_and_overflow() {
        for bad in [
            &b"10.00"[..],
            b"-1",
            b"+1",
            b" 1",
            b"1 ",
            b"1e3",
            b"",
            b"0x10",
            b"007",
            b"9223372036854775808",
            b"99999999999999999999",
            b"\xff",
        ] {
            let e = msg(parse_cache(&[b"k", b"u", bad, b"USD"]));
            assert!(e.starts_with("ERR amount"), "{bad:?}: {e}");
        }
        assert_eq!(parse_amount(b"9223372036854775807"), Ok(i64::MAX));
        assert_eq!(parse_amount(b"0"), Ok(0));
    }

    #[test]
    fn currency_must_be_three_letters() {
        for bad in [&b"US"[..], b"USDD", b"U5D", b"", b"\xc3\xa9UR", b"us "] {
            assert!(parse_currency(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_currency(b"eUr"), Ok(*b"EUR"));
    }

    #[test]
    fn key_and_user_id_lengths_are_enforced() {
        let long_key = vec![b'k'; 256];
        assert!(msg(parse_cache(&[&long_key, b"u", b"1", b"USD"]))
            .starts_with("ERR key must be 1 to 255"));
        assert!(parse_cache(&[&long_key[..255], b"u", b"1", b"USD"]).is_ok());
        assert!(msg(parse_cache(&[b"", b"u", b"1", b"USD"])).starts_with("ERR key"));
        let long_user = vec![b'u'; 129];
        assert!(msg(parse_cache(&[b"k", &long_user, b"1", b"USD"]))
            .starts_with("ERR user_id must be 1 to 128"));
        assert!(msg(parse_cache(&[b"k", b"", b"1", b"USD"])).starts_with("ERR user_id"));
        assert!(msg(parse_cache(&[b"k", b"a\nb", b"1", b"USD"])).contains("control"));
        assert!(msg(parse_cache(&[b"k\xff", b"u", b"1", b"USD"])).contains("UTF-8"));
    }

    #[test]
    fn ttl_must_be_positive_and_given_once() {
        for bad in [&b"0"[..], b"-5", b"1.5", b"x", b"315360001"] {
            assert!(msg(parse_cache(&[b"k", b"u", b"1", b"USD", b"TTL", bad]))
                .starts_with("ERR TTL must be"));
        }
        assert!(msg(parse_cache(&[b"k", b"u", b"1", b"USD", b"TTL"])).contains("TTL needs a value"));
        assert!(msg(parse_cache(&[
            b"k", b"u", b"1", b"USD", b"TTL", b"5", b"TTL", b"6"
        ]))
        .contains("more than once"));
        assert!(
            msg(parse_cache(&[b"k", b"u", b"1", b"USD", b"NX"])).contains("unknown option 'NX'")
        );
        let a = parse_cache(&[b"k", b"u", b"1", b"USD", b"brief", b"TTL", b"9"]).unwrap();
        assert!(a.brief);
        assert_eq!(a.ttl_secs, Some(9));
        assert!(!parse_cache(&[b"k", b"u", b"1", b"USD"]).unwrap().brief);
        assert!(
            msg(parse_cache(&[b"k", b"u", b"1", b"USD", b"BRIEF", b"BRIEF"]))
                .contains("more than once")
        );
        assert!(
            msg(parse_cache(&[b"k", b"u", b"1", b"USD", b"VERYLONGOPTION"]))
                .contains("unknown option")
        );
    }

    #[test]
    fn check_takes_only_json() {
        assert_eq!(
            parse_check(&[b"k"]).unwrap(),
            CheckArgs {
                key: b"k",
                json: false
            }
        );
        assert!(parse_check(&[b"k", b"json"]).unwrap().json);
        assert!(parse_check(&[b"k", b"JSON", b"JSON"]).is_err());
        assert!(parse_check(&[b"k", b"XML"]).is_err());
        assert!(parse_check(&[]).is_err());
    }

    #[test]
    fn update_parses_status_reason_and_ref() {
        let a = parse_update(&[
            b"k",
            b"FAILED",
            b"reason",
            b"card declined",
            b"ref",
            b"ch_9",
        ])
        .unwrap();
        assert_eq!(a.update.status, Status::Failed);
        assert_eq!(a.update.reason, Some("card declined"));
        assert_eq!(a.update.provider_ref, Some("ch_9"));
        assert!(msg(parse_update(&[b"k", b"done"])).starts_with("ERR status must be"));
        assert!(msg(parse_update(&[b"k"])).starts_with("ERR wrong number"));
        assert!(msg(parse_update(&[b"k", b"failed", b"REASON"])).contains("REASON needs a value"));
        let long = vec![b'r'; MAX_REASON_LEN + 1];
        assert!(parse_update(&[b"k", b"failed", b"REASON", &long]).is_err());
        assert!(parse_update(&[b"k", b"failed", b"REASON", b""]).is_ok());
        assert!(parse_update(&[b"k", b"failed", b"REF", b""]).is_err());
    }

    #[test]
    fn stuck_defaults_and_options() {
        let a = parse_stuck(&[]).unwrap();
        assert_eq!((a.older_ms, a.count), (None, DEFAULT_STUCK_COUNT));
        let a = parse_stuck(&[b"older", b"0", b"count", b"5000"]).unwrap();
        assert_eq!((a.older_ms, a.count), (Some(0), 5000));
        let e = msg(parse_stuck(&[b"CLAIM", b"w1", b"LEASE", b"30000"]));
        assert!(e.contains("PAY.CLAIM consumer LEASE ms"), "{e}");
        assert!(parse_stuck(&[b"COUNT", b"0"]).is_err());
        assert!(parse_stuck(&[b"COUNT", b"100001"]).is_err());
        assert!(parse_stuck(&[b"OLDER", b"-1"]).is_err());
        assert!(parse_stuck(&[b"BOGUS"]).is_err());
    }

    #[test]
    fn claim_needs_a_consumer_and_a_lease() {
        let a = parse_claim(&[b"w1", b"lease", b"30000"]).unwrap();
        assert_eq!(
            a,
            ClaimArgs {
                consumer: "w1",
                lease_ms: 30000,
                older_ms: None,
                count: 1
            }
        );
        let a = parse_claim(&[b"w1", b"COUNT", b"7", b"LEASE", b"1", b"OLDER", b"0"]).unwrap();
        assert_eq!((a.count, a.older_ms, a.lease_ms), (7, Some(0), 1));
        assert!(msg(parse_claim(&[b"w1"])).contains("LEASE ms is required"));
        assert!(msg(parse_claim(&[])).starts_with("ERR wrong number"));
        assert!(parse_claim(&[b"", b"LEASE", b"5"]).is_err());
        assert!(parse_claim(&[b"w1", b"LEASE", b"0"]).is_err());
        assert!(parse_claim(&[b"w1", b"LEASE", b"86400001"]).is_err());
        assert!(parse_claim(&[b"w\x01", b"LEASE", b"5"]).is_err());
    }

    #[test]
    fn update_takes_retry_and_fence() {
        let a = parse_update(&[b"k", b"unknown", b"RETRY", b"3600000", b"FENCE", b"4"]).unwrap();
        assert_eq!(a.update.status, Status::Unknown);
        assert_eq!(
            (a.update.retry_ms, a.update.fence),
            (Some(3_600_000), Some(4))
        );
        assert!(parse_update(&[b"k", b"pending", b"RETRY", b"0"]).is_ok());
        let e = msg(parse_update(&[b"k", b"succeeded", b"RETRY", b"5"]));
        assert!(e.contains("RETRY goes with pending or unknown"), "{e}");
        assert!(parse_update(&[b"k", b"pending", b"FENCE", b"-1"]).is_err());
        assert!(parse_update(&[b"k", b"pending", b"FENCE", b"4294967296"]).is_err());
        assert!(parse_update(&[b"k", b"pending", b"RETRY", b"2592000001"]).is_err());
        assert!(parse_update(&[b"k", b"pending", b"FENCE", b"1", b"FENCE", b"1"]).is_err());
    }

    #[test]
    fn load_parses_blob_and_expiry() {
        let a = parse_load(&[b"k", b"\x01\x02", b"PXAT", b"1700000000000"]).unwrap();
        assert_eq!(a.expire_at, Some(1_700_000_000_000));
        assert!(parse_load(&[b"k"]).is_err());
        assert!(parse_load(&[b"k", b"b", b"PXAT", b"0"]).is_err());
    }

    #[test]
    fn load_takes_any_key_redis_holds() {
        let long = [b'x'; 300];
        for key in [&long[..], b"tab\there", b"bin\x00\xff\r\n", b""] {
            assert_eq!(parse_load(&[key, b"blob"]).unwrap().key, key);
        }
    }

    #[test]
    fn unknown_option_text_is_sanitized() {
        let e = msg(parse_check(&[b"k", b"\x01\x02"]));
        assert_eq!(e, "ERR unknown option '??'");
    }
}
