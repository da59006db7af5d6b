//! The examples' work, run small: each example keeps its work in a function
//! this file calls with small parameters, and the tests check what the
//! example shows on the servers' side.

// Each example prints its table with `examples/common`, so including two of
// them loads that module twice (harmless: each copy is private to its
// example).
#![allow(clippy::duplicate_mod)]

mod common;

#[allow(dead_code)] // its `main`
#[path = "../examples/composable_pool.rs"]
mod composable_pool;
#[allow(dead_code)] // its `main`
#[path = "../examples/hand_stack.rs"]
mod hand_stack;
#[path = "../examples/streamed_upload.rs"]
mod streamed_upload;

use std::time::Duration;

use http::Method;
use tower_conn_lifecycle::retry::RetryReason;

/// `examples/composable_pool.rs`: on hyper-util's composable pool with the
/// crate's `pool` pieces, the seed race fails requests without IdleExpiry
/// and none with a configured expiry below the server's idle timeout; every
/// request reaches the server once, and no POST is processed twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composable_pool_expiry_removes_the_race() {
    // The server's idle timeout and, 80 ms below it, the configured expiry:
    // the slack a loaded 2-core machine needs for a request let through
    // just before the expiry to reach the server before its idle timer.
    const IDLE: Duration = Duration::from_millis(200);
    const EXPIRY: Duration = Duration::from_millis(120);
    const TASKS: usize = 10;
    const REQUESTS: usize = 20;
    let rows = composable_pool::run(IDLE, EXPIRY, TASKS, REQUESTS)
        .await
        .unwrap();
    assert_eq!(rows.len(), 6);
    for row in &rows {
        let what = format!("{} {}", row.client, row.method);
        let report = &row.report;
        println!(
            "{what}: {} errors, {} connections, server: {} requests, {} idle closes",
            report.errors(),
            row.connections,
            row.server_requests,
            row.server_idle_closes
        );
        assert_eq!(report.requests(), TASKS * REQUESTS, "{what}");
        // Server side: the connections the client opened were accepted;
        // every request that succeeded was answered, a POST processed once.
        assert_eq!(row.server_connections, row.connections, "{what}");
        assert!(row.server_requests as usize >= report.successes(), "{what}");
        if row.method == Method::POST {
            assert_eq!(row.server_posts as usize, report.successes(), "{what}");
        }
    }
    let errors = |client: &str| -> usize {
        rows.iter()
            .filter(|row| row.client == client)
            .map(|row| row.report.errors())
            .sum()
    };
    assert!(
        errors("without IdleExpiry") > 0,
        "the race must be real in this run"
    );
    for row in rows.iter().filter(|r| r.client == "IdleExpiry configured") {
        assert_eq!(
            row.report.errors(),
            0,
            "{} {}: {:?}",
            row.client,
            row.method,
            row.report.error_chains()
        );
        // Every request arrived exactly once, none on an expired
        // connection: the server never closed an idle connection first.
        assert_eq!(row.server_requests as usize, TASKS * REQUESTS);
        assert_eq!(row.server_idle_closes, 0, "{}", row.method);
        // Expired connections were replaced.
        assert!(row.connections > TASKS as u64, "{}", row.method);
    }
}

/// `examples/hand_stack.rs`: the layers stacked by hand on a hyper-util
/// legacy client built from the application's own builder (its settings
/// kept) remove the seed race the same builder loses requests to: every
/// request reaches the server once, none on a connection the server closed
/// as idle, and no POST is processed twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_stack_on_your_client_removes_the_race() {
    // As above: the expiry 80 ms below the server's idle timeout, the slack
    // a loaded 2-core machine needs.
    const IDLE: Duration = Duration::from_millis(200);
    const EXPIRY: Duration = Duration::from_millis(120);
    const TASKS: usize = 10;
    const REQUESTS: usize = 20;
    let rows = hand_stack::run(IDLE, EXPIRY, TASKS, REQUESTS)
        .await
        .unwrap();
    assert_eq!(rows.len(), 4);
    for row in &rows {
        let what = format!("{} {}", row.client, row.method);
        let report = &row.report;
        println!(
            "{what}: {} errors, server: {} connections, {} requests, {} idle closes",
            report.errors(),
            row.server_connections,
            row.server_requests,
            row.server_idle_closes
        );
        assert_eq!(report.requests(), TASKS * REQUESTS, "{what}");
        assert!(row.server_requests as usize >= report.successes(), "{what}");
        if row.method == Method::POST {
            assert_eq!(row.server_posts as usize, report.successes(), "{what}");
        }
    }
    let errors: usize = rows
        .iter()
        .filter(|row| row.client == "your client")
        .map(|row| row.report.errors())
        .sum();
    assert!(errors > 0, "the race must be real in this run");
    for row in rows.iter().filter(|r| r.client == "+ layers") {
        let what = format!("{} {}", row.client, row.method);
        assert_eq!(
            row.report.errors(),
            0,
            "{what}: {:?}",
            row.report.error_chains()
        );
        // Every request arrived exactly once, none on a connection the
        // server had closed as idle; expired connections were replaced.
        assert_eq!(row.server_requests as usize, TASKS * REQUESTS, "{what}");
        assert_eq!(row.server_idle_closes, 0, "{what}");
        assert!(row.server_connections > TASKS as u64, "{what}");
    }
}

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
