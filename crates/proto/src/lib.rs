//! Wire formats and typed records shared by the Tally agent and server.
//!
//! Nothing in this crate does I/O: it parses and renders the formats of the
//! Tailscale logs-service protocol (`logtail`) and the identifiers it uses.

pub mod alert;
pub mod audit;
pub mod collection;
pub mod finding;
pub mod flow;
pub mod ids;
pub mod logtail;
pub mod timefmt;

pub use collection::{CollectionName, InvalidCollectionName};
pub use ids::{IdError, PrivateId, PublicId};
