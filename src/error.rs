//! Every error a client can see, named once. Each message starts with its code.

use std::fmt;

use pay_proto::code;

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
            PayError::Arity(cmd) => write!(
                f,
                "{} wrong number of arguments for '{cmd}' command",
                code::ERR
            ),
            PayError::Arg(msg) => write!(f, "{} {msg}", code::ERR),
            PayError::Mismatch(msg) => write!(f, "{} {msg}", code::MISMATCH),
            PayError::Transition { from, to } => write!(
                f,
                "{} a {} payment cannot become {}",
                code::TRANSITION,
                from.as_str(),
                to.as_str()
            ),
            PayError::NoPayment => write!(f, "{} no such payment", code::NOPAYMENT),
            PayError::Fenced { expected, attempts } => write!(
                f,
                "{} the payment was claimed again since (attempts is {attempts}, not {expected}); nothing changed",
                code::FENCED
            ),
            PayError::WrongType => write!(
                f,
                "{} Operation against a key holding the wrong kind of value",
                code::WRONGTYPE
            ),
        }
    }
}

impl std::error::Error for PayError {}
