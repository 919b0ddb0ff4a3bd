//! A circuit breaker per adapter: stop calling a system that keeps failing,
//! and try it again after a pause. `TieredStore` guards its Redis with one
//! too.
//!
//! Written here rather than taken from a crate because it is a dozen lines
//! of state and must be driven by the caller's own notion of failure (for
//! the hub: an error, a timeout or a panic; "not applicable" is none).

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// When a breaker opens, and for how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures (errors, timeouts, panics) that open the breaker.
    pub failures_to_open: u32,
    /// How long an open breaker refuses calls before letting one trial through.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures_to_open: 5,
            open_for: Duration::from_secs(30),
        }
    }
}

/// Where a breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; this many failed in a row.
    Closed {
        /// Consecutive failures so far.
        consecutive_failures: u32,
    },
    /// Calls are refused until the pause is over.
    Open {
        /// How long until a trial call is let through.
        retry_in: Duration,
    },
    /// One trial call is in flight; its outcome closes or reopens the breaker.
    HalfOpen,
}

#[derive(Clone, Copy, Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// One adapter's breaker.
#[derive(Debug)]
pub(crate) struct CircuitBreaker {
    config: BreakerConfig,
    state: Mutex<State>,
}

impl CircuitBreaker {
    pub(crate) fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// May a call go through now? `Err(retry_in)` if not.
    pub(crate) fn try_acquire(&self) -> Result<(), Duration> {
        let mut state = self.state.lock();
        match *state {
            State::Closed { .. } => Ok(()),
            State::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    *state = State::HalfOpen;
                    Ok(())
                } else {
                    Err(until - now)
                }
            }
            // Only the one trial call; the others wait for its verdict.
            State::HalfOpen => Err(Duration::ZERO),
        }
    }

    pub(crate) fn record_success(&self) {
        *self.state.lock() = State::Closed { failures: 0 };
    }

    pub(crate) fn record_failure(&self) {
        let mut state = self.state.lock();
        let failures = match *state {
            State::Closed { failures } => failures + 1,
            State::HalfOpen | State::Open { .. } => self.config.failures_to_open,
        };
        *state = if failures >= self.config.failures_to_open {
            State::Open {
                until: Instant::now() + self.config.open_for,
            }
        } else {
            State::Closed { failures }
        };
    }

    /// A call that was let through but came to no verdict (the adapter said
    /// "not applicable"): a half-open breaker lets the next one try.
    pub(crate) fn record_neutral(&self) {
        let mut state = self.state.lock();
        if let State::HalfOpen = *state {
            *state = State::Open {
                until: Instant::now(),
            };
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        match *self.state.lock() {
            State::Closed { failures } => BreakerState::Closed {
                consecutive_failures: failures,
            },
            State::Open { until } => BreakerState::Open {
                retry_in: until.saturating_duration_since(Instant::now()),
            },
            State::HalfOpen => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_recovers_through_one_trial() {
        let breaker = CircuitBreaker::new(BreakerConfig {
            failures_to_open: 3,
            open_for: Duration::from_secs(10),
        });
        breaker.record_failure();
        breaker.record_success();
        breaker.record_failure();
        breaker.record_failure();
        assert!(breaker.try_acquire().is_ok(), "two in a row is not three");
        breaker.record_failure();
        assert_eq!(breaker.try_acquire(), Err(Duration::from_secs(10)));

        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(breaker.try_acquire(), Ok(()), "one trial after the pause");
        assert!(breaker.try_acquire().is_err(), "only one");
        breaker.record_failure();
        assert!(matches!(breaker.state(), BreakerState::Open { .. }));

        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(breaker.try_acquire(), Ok(()));
        breaker.record_success();
        assert_eq!(
            breaker.state(),
            BreakerState::Closed {
                consecutive_failures: 0
            }
        );
    }
}
