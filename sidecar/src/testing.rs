//! What the unit tests share: a Redis connection that answers from a list.

use std::collections::VecDeque;

use redis::{ConnectionLike, RedisResult, Value};

/// A Redis connection that answers each command with the next raw RESP
/// reply of a list, and keeps every command it was sent as its arguments.
pub(crate) struct FakeConnection {
    replies: VecDeque<&'static [u8]>,
    pub(crate) sent: Vec<Vec<String>>,
}

impl FakeConnection {
    pub(crate) fn new(replies: &[&'static [u8]]) -> FakeConnection {
        FakeConnection {
            replies: replies.iter().copied().collect(),
            sent: Vec::new(),
        }
    }

    /// The commands sent, each as its arguments joined by spaces.
    pub(crate) fn sent_lines(&self) -> Vec<String> {
        self.sent.iter().map(|args| args.join(" ")).collect()
    }
}

impl ConnectionLike for FakeConnection {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        // A packed command is a RESP array of bulk strings.
        let args: Vec<String> = redis::from_redis_value(redis::parse_redis_value(cmd)?)
            .expect("a command is an array of bulk strings");
        let reply = self
            .replies
            .pop_front()
            .unwrap_or_else(|| panic!("no reply left for {args:?}"));
        self.sent.push(args);
        redis::parse_redis_value(reply)?.extract_error()
    }

    fn req_packed_commands(&mut self, _: &[u8], _: usize, _: usize) -> RedisResult<Vec<Value>> {
        unreachable!("no pipelines")
    }

    fn get_db(&self) -> i64 {
        0
    }

    fn check_connection(&mut self) -> bool {
        true
    }

    fn is_open(&self) -> bool {
        true
    }
}
