//! Waiting for a condition that publishes no signal a test could await
//! (another process's state read over HTTP or from files): poll it, with a
//! deadline and a message that says what never happened.

use std::time::{Duration, Instant};

/// Polls `ok` every 20 ms until it returns `Some`, and returns that; panics
/// after `within` with `what` and the last state `ok` described.
pub async fn until<T, F, Fut>(what: &str, within: Duration, mut ok: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        let last = match ok().await {
            Ok(v) => return v,
            Err(state) => state,
        };
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}; last state: {last}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
