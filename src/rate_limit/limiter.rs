use std::fmt;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::{NoOpMiddleware, StateInformationMiddleware};
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::config::{RateLimitConfig, RatePeriod};

/// A tenant's limiter. Generic over the clock so that tests drive it with
/// governor's `FakeRelativeClock` instead of sleeping.
pub struct TenantLimiter<C: Clock = DefaultClock> {
    limiter: RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
    clock: C,
}

impl<C: Clock> fmt::Debug for TenantLimiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantLimiter").finish_non_exhaustive()
    }
}

fn quota(config: &RateLimitConfig) -> Quota {
    let base = match config.per {
        RatePeriod::Second => Quota::per_second(config.rate),
        RatePeriod::Minute => Quota::per_minute(config.rate),
    };
    base.allow_burst(config.burst)
}

impl TenantLimiter<DefaultClock> {
    pub fn new(config: &RateLimitConfig) -> Self {
        Self::with_clock(config, DefaultClock::default())
    }
}

impl<C: Clock + Clone> TenantLimiter<C> {
    pub fn with_clock(config: &RateLimitConfig, clock: C) -> Self {
        Self {
            limiter: RateLimiter::direct_with_clock(quota(config), clock.clone()),
            clock,
        }
    }

    /// Takes one cell, or says how long until one is free.
    pub fn check(&self) -> Result<(), Duration> {
        self.limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

/// The shared Ark quota in this process: like a tenant's limiter, and it can
/// tell a background caller (the reconciler) to leave room for tenants.
pub(crate) struct GlobalLimiter<C: Clock = DefaultClock> {
    limiter: RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>,
    clock: C,
    /// Time for one cell to come back.
    interval: Duration,
}

impl<C: Clock> fmt::Debug for GlobalLimiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GlobalLimiter").finish_non_exhaustive()
    }
}

impl GlobalLimiter<DefaultClock> {
    pub(crate) fn new(config: &RateLimitConfig) -> Self {
        Self::with_clock(config, DefaultClock::default())
    }
}

impl<C: Clock + Clone> GlobalLimiter<C> {
    pub(crate) fn with_clock(config: &RateLimitConfig, clock: C) -> Self {
        let quota = quota(config);
        Self {
            limiter: RateLimiter::direct_with_clock(quota, clock.clone())
                .with_middleware::<StateInformationMiddleware>(),
            interval: quota.replenish_interval(),
            clock,
        }
    }

    /// Takes one cell, or says how long until one is free.
    pub(crate) fn check(&self) -> Result<(), Duration> {
        self.limiter
            .check()
            .map(|_| ())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Takes one cell for a caller that must leave `reserve` cells to others:
    /// when fewer are left afterwards, it is told to wait until they are back.
    pub(crate) fn check_leaving(&self, reserve: u32) -> Result<(), Duration> {
        match self.limiter.check() {
            Ok(state) if state.remaining_burst_capacity() >= reserve => Ok(()),
            Ok(state) => Err(self.interval * (reserve - state.remaining_burst_capacity())),
            Err(not_until) => Err(not_until.wait_time_from(self.clock.now())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use governor::clock::FakeRelativeClock;

    use super::*;

    fn config(per: RatePeriod, rate: u32, burst: u32) -> RateLimitConfig {
        RateLimitConfig {
            per,
            rate: NonZeroU32::new(rate).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    #[test]
    fn burst_then_refill_at_the_configured_rate() {
        let clock = FakeRelativeClock::default();
        let limiter = TenantLimiter::with_clock(&config(RatePeriod::Second, 5, 10), clock.clone());
        for i in 0..10 {
            assert!(limiter.check().is_ok(), "request {i} is within the burst");
        }
        let wait = limiter.check().unwrap_err();
        assert_eq!(wait, Duration::from_millis(200));
        clock.advance(Duration::from_millis(199));
        assert!(limiter.check().is_err());
        clock.advance(Duration::from_millis(1));
        assert!(limiter.check().is_ok());
        assert!(limiter.check().is_err());
    }

    #[test]
    fn a_background_caller_leaves_a_fifth_of_the_quota_to_tenants() {
        let clock = FakeRelativeClock::default();
        let limiter = GlobalLimiter::with_clock(&config(RatePeriod::Minute, 60, 10), clock.clone());
        // Ten cells, two to keep: eight calls go, the one that leaves one is told to wait.
        for i in 0..8 {
            assert!(limiter.check_leaving(2).is_ok(), "call {i}");
        }
        assert_eq!(limiter.check_leaving(2), Err(Duration::from_secs(1)));
        // Tenants still get the last cell.
        assert!(limiter.check().is_ok());
        assert!(limiter.check().is_err());
        clock.advance(Duration::from_secs(3));
        assert!(limiter.check_leaving(2).is_ok(), "three cells back, two kept");
    }

    #[test]
    fn per_minute_limits_wait_in_seconds() {
        let clock = FakeRelativeClock::default();
        let limiter = TenantLimiter::with_clock(&config(RatePeriod::Minute, 1, 1), clock.clone());
        assert!(limiter.check().is_ok());
        assert_eq!(limiter.check().unwrap_err(), Duration::from_secs(60));
        clock.advance(Duration::from_secs(30));
        assert_eq!(limiter.check().unwrap_err(), Duration::from_secs(30));
    }
}
