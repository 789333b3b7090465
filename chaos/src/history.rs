//! The history: every operation the clients made, with its start and end
//! (ms since the run began) and its result, plus what each story (one
//! customer's checkout) amounted to. The checker judges the whole of it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Clone, Debug, Serialize)]
pub struct Op {
    pub start_ms: u64,
    pub end_ms: u64,
    pub client: u16,
    pub click: u8,
    pub story: u64,
    /// `cache`, `wait`, `charge`, `update`.
    pub kind: &'static str,
    pub result: String,
}

/// One customer's checkout.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Story {
    pub key: String,
    pub txn: String,
    pub user: String,
    pub amount: i64,
    /// PAY.CACHE answered `created` (once per key, unless a failover lost it).
    pub created: u32,
    /// A `created` write was acknowledged by WAIT 1 on its connection.
    pub acknowledged: bool,
    /// The application sent POSTs for it.
    pub app_posts: u32,
}

pub struct History {
    ops: Mutex<Vec<Op>>,
    stories: Mutex<BTreeMap<u64, Story>>,
}

impl Default for History {
    fn default() -> History {
        History::new()
    }
}

impl History {
    pub fn new() -> History {
        History {
            ops: Mutex::new(Vec::new()),
            stories: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn now_ms(&self) -> u64 {
        crate::clock::ms()
    }

    pub fn record(&self, op: Op) {
        lock(&self.ops).push(op);
    }

    pub fn story(&self, n: u64, story: Story) {
        lock(&self.stories).insert(n, story);
    }

    pub fn update_story(&self, n: u64, f: impl FnOnce(&mut Story)) {
        if let Some(s) = lock(&self.stories).get_mut(&n) {
            f(s);
        }
    }

    pub fn ops(&self) -> Vec<Op> {
        lock(&self.ops).clone()
    }

    pub fn stories(&self) -> BTreeMap<u64, Story> {
        lock(&self.stories).clone()
    }

    /// One JSON line per operation, in start order.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut ops = self.ops();
        ops.sort_by_key(|o| (o.start_ms, o.end_ms));
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        for op in ops {
            writeln!(f, "{}", serde_json::to_string(&op).unwrap_or_default())?;
        }
        f.flush()
    }
}
