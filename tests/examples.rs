//! The examples' work, run small, with their server-side facts asserted.

mod common;

use tower_conn_lifecycle::retry::RetryReason;

#[path = "../examples/streamed_upload.rs"]
mod streamed_upload;

/// `examples/streamed_upload.rs`: a streamed (not `Clone`) upload through
/// the one-call client, whose first attempt dies on a stale keep-alive
/// connection, is retried on a new connection and arrives whole, once.
#[tokio::test]
async fn streamed_upload_is_retried_and_arrives_intact_once() {
    // Past the 64 KiB replay buffer, and not a multiple of its chunks.
    let size = 1_000_003;
    let report = common::bounded(
        common::STEP_LIMIT,
        "the streamed upload",
        streamed_upload::run(size),
    )
    .await
    .unwrap();
    assert_eq!(report.status, http::StatusCode::OK);
    assert_eq!(report.retries, [RetryReason::StaleConnection]);
    // The warm-up's connection (closed under the first attempt) and the
    // retry's.
    assert_eq!(report.connections, 2);
    assert_eq!(report.attempts, 2);
    // Nothing of the first attempt's body, all of the second's: once.
    assert_eq!(report.body_bytes, size);
    assert_eq!((report.intact, report.corrupt), (1, 0));
}
