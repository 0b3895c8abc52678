//! Requests retried where they failed, while a member is gone or a leader is being elected.
//!
//! The client balances requests over every endpoint, including one that is down: without a
//! retry here, a dead member fails a share of all requests, and each failure ends the session
//! (a dump starts over). Only once etcd has answered in this session: a first contact that
//! fails is the session's to report and retry. A leader election takes a few seconds; past
//! [`RETRY_WINDOW`] the error goes to the session, whose own backoff takes over. A request
//! waiting long for an answer (no quorum) is said in the log and on `/readyz` while it waits.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::warn;

use super::{client_error, SinkError, Store};

/// At most one warning about a retried request per this long: with a member down, a share of
/// all requests fails once (the client balances over the endpoints it was given); while etcd
/// keeps failing, the log says so this often.
const RETRY_WARNING_EVERY: Duration = Duration::from_secs(5);
/// At most one warning about a slow answer per this long: the dump has many requests in flight,
/// and all of them wait when etcd does.
const SLOW_WARNING_EVERY: Duration = Duration::from_secs(2);

/// Whether a warning last given at `last` may be given again after `every`.
fn warning_due(last: &std::sync::Mutex<Option<Instant>>, every: Duration) -> bool {
    let Ok(mut last) = last.lock() else {
        return true;
    };
    let due = last.is_none_or(|at| at.elapsed() >= every);
    if due {
        *last = Some(Instant::now());
    }
    due
}

static LAST_RETRY_WARNING: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
static LAST_SLOW_WARNING: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);

/// How long one request is retried before its error ends the session.
const RETRY_WINDOW: Duration = Duration::from_secs(20);
/// A request unanswered this long is reported (etcd answers in milliseconds when it has a
/// leader; it fails a proposal after about 7 s when it has none).
const SLOW_ANSWER: Duration = Duration::from_secs(3);

impl Store {
    /// Runs `request` until it succeeds, fails with an error no retry cures, or has failed for
    /// [`RETRY_WINDOW`]. `attempt` is the attempt's number (0 first), for requests whose retry
    /// must know that an earlier attempt's outcome is unknown.
    pub(super) async fn retrying<T, F, Fut>(
        &self,
        context: &str,
        mut request: F,
    ) -> Result<T, SinkError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let started = Instant::now();
        let mut wait = Duration::from_millis(50);
        let mut attempt = 0;
        let mut reported = false;
        loop {
            let error = match self
                .answer_reported(context, request(attempt), &mut reported)
                .await
            {
                Ok(value) => {
                    self.answered.store(true, Ordering::Relaxed);
                    if reported {
                        self.report_failing(None);
                    }
                    return Ok(value);
                }
                Err(e) => client_error(context, e),
            };
            let answered = self.answered.load(Ordering::Relaxed);
            if !error.is_transient() || !answered || started.elapsed() + wait > RETRY_WINDOW {
                return Err(error);
            }
            let line = format!("{}; retrying", etcd_sync_api::error_chain(&error));
            if warning_due(&LAST_RETRY_WARNING, RETRY_WARNING_EVERY) {
                warn!("{line}");
            }
            self.report_failing(Some(line));
            reported = true;
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
            attempt += 1;
        }
    }

    /// Awaits `answer`; if it takes longer than [`SLOW_ANSWER`], says so in the log and on
    /// `/readyz` until it comes.
    async fn answer_reported<T>(
        &self,
        context: &str,
        answer: impl Future<Output = Result<T, etcd_client::Error>>,
        reported: &mut bool,
    ) -> Result<T, etcd_client::Error> {
        tokio::pin!(answer);
        tokio::select! {
            result = &mut answer => return result,
            _ = tokio::time::sleep(SLOW_ANSWER) => {}
        }
        let why = format!(
            "{context}: etcd has not answered for {}s (has the cluster lost its leader or \
             quorum? check etcd's members)",
            SLOW_ANSWER.as_secs()
        );
        if warning_due(&LAST_SLOW_WARNING, SLOW_WARNING_EVERY) {
            warn!("{why}");
        }
        self.report_failing(Some(why));
        *reported = true;
        answer.await
    }

    fn report_failing(&self, failure: Option<String>) {
        if let Some(metrics) = &self.metrics {
            metrics.set_failing(failure);
        }
    }
}
