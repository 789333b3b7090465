//! DUMP/RESTORE payloads: the CRC, the RDB version, and records no command
//! could write.

use redis::Connection;

use crate::*;

/// Redis's CRC-64 (Jones polynomial, reflected, no final xor): what a DUMP
/// payload ends with, little-endian.
pub fn crc64_jones(bytes: &[u8]) -> u64 {
    const POLY: u64 = 0x95ac_9329_ac4b_c9b5; // 0xad93d23594c935a9 reflected
    static TABLE: std::sync::OnceLock<[u64; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u64; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut crc = i as u64;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ POLY
                } else {
                    crc >> 1
                };
            }
            *slot = crc;
        }
        t
    });
    bytes.iter().fold(0u64, |crc, &b| {
        table[((crc ^ u64::from(b)) & 0xff) as usize] ^ (crc >> 8)
    })
}

/// A DUMP payload: `value` (an RDB value), the 2-byte RDB version, and a
/// valid CRC over both.
pub fn seal_payload(value: &[u8], version: [u8; 2]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 10);
    out.extend_from_slice(value);
    out.extend_from_slice(&version);
    let crc = crc64_jones(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A DUMP payload's RDB value and RDB version.
pub fn split_payload(payload: &[u8]) -> (&[u8], [u8; 2]) {
    assert!(payload.len() > 10, "short DUMP payload");
    let (value, trailer) = payload.split_at(payload.len() - 10);
    (value, [trailer[0], trailer[1]])
}

pub fn dump(c: &mut Connection, key: &[u8]) -> Option<Vec<u8>> {
    redis::cmd("DUMP").arg(key).query(c).unwrap()
}

/// A RESTORE payload holding the record `blob` (the codec's bytes): how a
/// test writes a record no command could, now that PAY.LOAD refuses
/// clients. The module id and RDB version come from a DUMP of a scratch
/// payment, created and deleted here.
pub fn record_payload(c: &mut Connection, blob: &[u8]) -> Vec<u8> {
    let scratch = "__record_payload_scratch__";
    cache(c, scratch, "u", 1, "USD");
    let model = dump(c, scratch.as_bytes()).expect("DUMP of a payment");
    let _: () = redis::cmd("DEL").arg(scratch).query(c).unwrap();
    let (value, version) = split_payload(&model);
    // Type (module, encoding 2), 0x81 and the 8-byte module id; then the
    // record as one string (opcode 5, RDB length, bytes) and the EOF opcode.
    let mut v = value[..10].to_vec();
    v.push(5);
    let n = blob.len();
    if n < 64 {
        v.push(n as u8);
    } else if n < 16_384 {
        v.extend_from_slice(&[0x40 | (n >> 8) as u8, n as u8]);
    } else {
        v.push(0x80);
        v.extend_from_slice(&(n as u32).to_be_bytes());
    }
    v.extend_from_slice(blob);
    v.push(0);
    seal_payload(&v, version)
}
