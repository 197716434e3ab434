//! A token bucket: `rate` tokens a second up to `burst`, one taken per
//! event. Sans-IO: the caller passes the time.

use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    tokens: f64,
    updated: Instant,
}

/// The shape every bucket of one limit shares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketShape {
    /// Tokens added per second.
    pub rate: f64,
    /// Most tokens held (the allowed burst).
    pub burst: f64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(shape: BucketShape, now: Instant) -> Self {
        TokenBucket {
            tokens: shape.burst,
            updated: now,
        }
    }

    fn refill(&mut self, shape: BucketShape, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * shape.rate).min(shape.burst);
        self.updated = now;
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, shape: BucketShape, now: Instant) -> bool {
        self.refill(shape, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket would be full at `now` (it then carries no
    /// state worth keeping).
    pub fn is_full(&self, shape: BucketShape, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens + elapsed * shape.rate >= shape.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate() {
        let shape = BucketShape {
            rate: 10.0,
            burst: 5.0,
        };
        let t0 = Instant::now();
        let mut bucket = TokenBucket::full(shape, t0);
        assert_eq!((0..8).filter(|_| bucket.try_take(shape, t0)).count(), 5);
        assert!(!bucket.is_full(shape, t0));
        // 10 a second: one more every 100 ms.
        let t1 = t0 + Duration::from_millis(100);
        assert!(bucket.try_take(shape, t1));
        assert!(!bucket.try_take(shape, t1));
        // Never more than the burst, however long it rested.
        let t2 = t1 + Duration::from_secs(60);
        assert!(bucket.is_full(shape, t2));
        assert_eq!((0..8).filter(|_| bucket.try_take(shape, t2)).count(), 5);
    }
}
