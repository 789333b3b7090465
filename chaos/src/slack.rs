//! The Slack stand-in: records every incoming-webhook message, with the
//! payment keys it names (each written `` `payment:...` `` by the sidecar).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use testkit::http::{self, HttpResponse};

use crate::clock;

#[derive(Clone, Debug, Serialize)]
pub struct Message {
    pub at_ms: u64,
    pub text: String,
}

pub struct Slack {
    pub url: String,
    messages: Arc<Mutex<Vec<Message>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Slack {
    pub fn start() -> std::io::Result<Slack> {
        let messages: Arc<Mutex<Vec<Message>>> = Arc::default();
        let m = messages.clone();
        let addr = http::serve(move |rq| {
            if rq.method != "POST" {
                return Some(HttpResponse::new(405, "{}"));
            }
            let text = serde_json::from_slice::<serde_json::Value>(&rq.body)
                .ok()
                .and_then(|v| v["text"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&rq.body).into_owned());
            lock(&m).push(Message {
                at_ms: clock::ms(),
                text,
            });
            Some(HttpResponse::new(200, "\"ok\""))
        })?;
        Ok(Slack {
            url: format!("http://{addr}/services/T000/B000/CHAOS"),
            messages,
        })
    }

    pub fn messages(&self) -> Vec<Message> {
        lock(&self.messages).clone()
    }

    /// Keys named in messages about payments with an unknown outcome.
    pub fn unknown_keys(&self) -> BTreeSet<String> {
        lock(&self.messages)
            .iter()
            .filter(|m| m.text.contains("unknown outcome"))
            .flat_map(|m| keys_in(&m.text))
            .collect()
    }
}

/// Every `` `payment:...` `` in a text.
pub fn keys_in(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|k| k.starts_with("payment:") && !k.contains(' '))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::keys_in;

    #[test]
    fn keys_are_read_from_their_backticks_only() {
        let text = "• `payment:t1` 1.00 USD — then `PAY.UPDATE payment:t1 succeeded|failed` — x\n• `payment:t2` 2.00 USD";
        assert_eq!(keys_in(text), ["payment:t1", "payment:t2"]);
    }
}
