//! redis-pay's test house (dev-only, never published).
//!
//! Real servers with the module loaded, on free loopback ports, in temporary
//! directories, killed on drop even when a test panics; what the tests read
//! from them and the invariants they check; stand-ins for the payment
//! provider and Slack. The module's integration tests (`tests/*.rs`), the
//! sidecar's (`sidecar/tests/*.rs`), the demo (`pay-demo`) and the
//! benchmarks (`benches/`) all start from here.
//!
//! `PAY_SERVER` names the server binary (default `redis-server`); `make test`
//! runs the suites once per server. `PAY_MODULE` names the module (default:
//! the release build in `target/`).
//!
//! Layout:
//! - [`server`]: `Server`, `Opts`, `free_port`, the module's and the server's
//!   paths, replication, CONFIG SET, ROLE, the neighbour module.
//! - [`reply`]: error text, scalars, records, INFO fields.
//! - [`payments`]: the PAY.* commands as tests call them; keyspace listings.
//! - [`invariants`]: the index checker; same records, same bytes.
//! - [`load`]: event-loop stalls under a mass sweep.
//! - [`cluster`]: forming clusters (with replicas too) and resharding by keys.
//! - [`payload`]: DUMP/RESTORE payloads.
//! - [`process`]: other processes (Sentinels, a TLS server, pay-sidecar),
//!   killed on drop.
//! - [`sidecar`]: the pay-sidecar binary under test, its least-privilege ACL.
//! - [`tls`]: certificates made with `openssl`, a TLS-only server and
//!   connections to it (the `tls` feature).
//! - [`sentinel`]: Sentinels, plain or TLS.
//! - [`http`]: the small HTTP/1.1 server the stand-ins (and pay-chaos's) run.
//! - [`standin`]: the provider ("bank") and Slack over real HTTP.

pub mod cluster;
pub mod http;
pub mod invariants;
pub mod load;
pub mod payload;
pub mod payments;
pub mod process;
pub mod reply;
pub mod sentinel;
pub mod server;
pub mod sidecar;
pub mod standin;
pub mod tls;

pub use cluster::*;
pub use invariants::*;
pub use load::*;
pub use payload::*;
pub use payments::*;
pub use process::*;
pub use reply::*;
pub use sentinel::*;
pub use server::*;
pub use sidecar::*;
pub use tls::*;
