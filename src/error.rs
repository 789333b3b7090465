//! Every error a client can see, named once. Each message starts with its code.

use std::fmt;

use crate::record::Status;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayError {
    /// Wrong number of arguments for the named command.
    Arity(&'static str),
    /// A bad argument: the text names the argument and what is wrong with it.
    Arg(String),
    /// The idempotency key is already bound to other parameters.
    Mismatch(String),
    /// A forbidden status change.
    Transition { from: Status, to: Status },
    /// PAY.UPDATE on a key that holds no payment.
    NoPayment,
    /// A FENCE that no longer matches: the payment was claimed again since
    /// the caller's claim.
    Fenced { expected: u32, attempts: u32 },
    /// The key holds another kind of value.
    WrongType,
}

impl PayError {
    pub fn arg(msg: impl Into<String>) -> Self {
        PayError::Arg(msg.into())
    }
}

impl fmt::Display for PayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayError::Arity(cmd) => write!(f, "ERR wrong number of arguments for '{cmd}' command"),
            PayError::Arg(msg) => write!(f, "ERR {msg}"),
            PayError::Mismatch(msg) => write!(f, "MISMATCH {msg}"),
            PayError::Transition { from, to } => write!(
                f,
                "TRANSITION a {} payment cannot become {}",
                from.as_str(),
                to.as_str()
            ),
            PayError::NoPayment => write!(f, "NOPAYMENT no such payment"),
            PayError::Fenced { expected, attempts } => write!(
                f,
                "FENCED the payment was claimed again since (attempts is {attempts}, not {expected}); nothing changed"
            ),
            PayError::WrongType => write!(
                f,
                "WRONGTYPE Operation against a key holding the wrong kind of value"
            ),
        }
    }
}

impl std::error::Error for PayError {}
