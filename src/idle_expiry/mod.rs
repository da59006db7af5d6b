//! Idle expiry: never write a request on a keep-alive connection the server
//! is about to close.

mod error;

pub use error::ConnectionExpired;
