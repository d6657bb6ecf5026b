//! The quality monitor's arithmetic: agreement over a rolling window of scored samples, a Wilson
//! score interval around it, and the episodes it turns into — an alert that fires once when the
//! interval says agreement is below the route's bar, and clears once when it recovers, not on every
//! sample. Kept apart from where samples come from (shadow checks) and where alerts go (log, metric,
//! webhook), so that its false-alarm rate and time to detect can be measured here, sample by sample.
//! An alert fires when the whole interval is below the bar and clears when the whole interval is
//! above it: between the two the state holds, so one episode is one alert.
//!
//! Scores are fractions (a JSON answer can half agree); the interval treats their sum as the count
//! of agreeing samples, which is exact for labels (0 or 1) and close for the rest.

use std::collections::VecDeque;

use crate::config::Shadow;

/// z for a two-sided 95% interval: an alert needs the whole interval below the bar.
const Z: f64 = 1.96;

/// A Wilson score interval for a proportion.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

/// The Wilson score interval of `agreeing` out of `samples` at `z` standard deviations; the whole
/// range when there are no samples.
pub fn wilson(agreeing: f64, samples: u64, z: f64) -> Interval {
    if samples == 0 {
        return Interval {
            low: 0.0,
            high: 1.0,
        };
    }
    let n = samples as f64;
    let p = (agreeing / n).clamp(0.0, 1.0);
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let spread = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    let scale = 1.0 + z2 / n;
    Interval {
        low: ((centre - spread) / scale).max(0.0),
        high: ((centre + spread) / scale).min(1.0),
    }
}

/// What one route and model's monitor is set to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MonitorPolicy {
    /// The bar: agreement the route needs (`shadow.min_agreement`).
    pub min_agreement: f64,
    /// Samples the window must hold before it may fire or clear.
    pub min_samples: u64,
    /// The rolling window, in samples.
    pub window: usize,
}

impl MonitorPolicy {
    pub fn of(shadow: &Shadow) -> MonitorPolicy {
        MonitorPolicy {
            min_agreement: shadow.min_agreement,
            min_samples: u64::from(shadow.min_samples),
            window: shadow.window as usize,
        }
    }
}

/// A change the monitor reports; nothing is reported while the state holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Episode {
    /// The whole interval is below the bar.
    Fired(Evidence),
    /// The whole interval is back above the bar.
    Cleared(Evidence),
}

/// What an alert says: agreement, its interval, and how many samples it rests on.
#[derive(Debug, Clone, PartialEq)]
pub struct Evidence {
    pub agreement: f64,
    pub interval: Interval,
    pub samples: u64,
}

/// One route and model's rolling window and alert state.
#[derive(Debug)]
pub struct Monitor {
    policy: MonitorPolicy,
    scores: VecDeque<f64>,
    sum: f64,
    alerting: bool,
}

impl Monitor {
    pub fn new(policy: MonitorPolicy) -> Monitor {
        Monitor {
            policy,
            scores: VecDeque::with_capacity(policy.window),
            sum: 0.0,
            alerting: false,
        }
    }

    /// A monitor taken up where the ledger left it: `scores` oldest first (the last `window` are
    /// kept), in or out of an alert episode. Restoring announces nothing: the episode was
    /// announced when it began.
    pub fn restore(policy: MonitorPolicy, scores: &[f64], alerting: bool) -> Monitor {
        let mut monitor = Monitor::new(policy);
        let keep = scores.len().saturating_sub(policy.window);
        for score in &scores[keep..] {
            let score = score.clamp(0.0, 1.0);
            monitor.scores.push_back(score);
            monitor.sum += score;
        }
        monitor.alerting = alerting;
        monitor
    }

    /// Adds one scored sample (0 to 1); returns the episode it starts or ends, if any.
    pub fn record(&mut self, agreement: f64) -> Option<Episode> {
        let agreement = agreement.clamp(0.0, 1.0);
        if self.scores.len() == self.policy.window
            && let Some(oldest) = self.scores.pop_front()
        {
            self.sum -= oldest;
        }
        self.scores.push_back(agreement);
        self.sum += agreement;
        if (self.scores.len() as u64) < self.policy.min_samples {
            return None;
        }
        let evidence = self.evidence();
        if !self.alerting && evidence.interval.high < self.policy.min_agreement {
            self.alerting = true;
            return Some(Episode::Fired(evidence));
        }
        // Cleared only once agreement is proven at the bar again: a window still full of the bad
        // episode's samples reaches the bar by chance now and then, and would flap.
        if self.alerting && evidence.interval.low >= self.policy.min_agreement {
            self.alerting = false;
            return Some(Episode::Cleared(evidence));
        }
        None
    }

    pub fn alerting(&self) -> bool {
        self.alerting
    }

    /// Agreement is proven at the bar: the whole interval is above it (what promotes a tier).
    pub fn proven(&self) -> bool {
        self.scores.len() as u64 >= self.policy.min_samples
            && self.evidence().interval.low >= self.policy.min_agreement
    }

    pub fn evidence(&self) -> Evidence {
        let samples = self.scores.len() as u64;
        Evidence {
            agreement: if samples == 0 {
                0.0
            } else {
                self.sum / samples as f64
            },
            interval: wilson(self.sum, samples, Z),
            samples,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> MonitorPolicy {
        MonitorPolicy {
            min_agreement: 0.90,
            min_samples: u64::from(Shadow::DEFAULT_MIN_SAMPLES),
            window: Shadow::DEFAULT_WINDOW as usize,
        }
    }

    #[test]
    fn wilson_matches_published_values() {
        // 94 of 100 at 95%: 0.8752 to 0.9722 (Wilson 1927, as tabulated by Newcombe 1998's method 3).
        let interval = wilson(94.0, 100, 1.96);
        assert!((interval.low - 0.8752).abs() < 5e-4, "{interval:?}");
        assert!((interval.high - 0.9722).abs() < 5e-4, "{interval:?}");
        // All agree: the high end is 1, the low end stays below it.
        let all = wilson(20.0, 20, 1.96);
        assert!((all.high - 1.0).abs() < 1e-12, "{all:?}");
        assert!((all.low - 0.8389).abs() < 5e-4, "{all:?}");
        assert_eq!(
            wilson(0.0, 0, 1.96),
            Interval {
                low: 0.0,
                high: 1.0
            }
        );
    }

    /// A tier whose answers agree with probability `rate`, sample by sample.
    fn samples(rng: &mut fastrand::Rng, rate: f64, n: usize) -> Vec<f64> {
        (0..n)
            .map(|_| if rng.f64() < rate { 1.0 } else { 0.0 })
            .collect()
    }

    /// The article's case: a steady 94% against a 90% bar raises no alarm over 20,000 samples; a
    /// model update that drops it to 87% fires once (a median of some hundreds of samples, never
    /// more than 3,000, over 20 runs); back at 94% it clears once.
    #[test]
    fn a_drop_from_94_to_87_percent_fires_once_and_a_steady_94_never_does() {
        let mut detections: Vec<usize> = Vec::new();
        for seed in 0..20 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut monitor = Monitor::new(policy());
            let false_alarms = samples(&mut rng, 0.94, 20_000)
                .into_iter()
                .filter_map(|score| monitor.record(score))
                .count();
            assert_eq!(false_alarms, 0, "seed {seed}: a steady 94% raised an alarm");

            let mut to_detect = None;
            let mut episodes = Vec::new();
            for (i, score) in samples(&mut rng, 0.87, 3_000).into_iter().enumerate() {
                if let Some(episode) = monitor.record(score) {
                    to_detect.get_or_insert(i + 1);
                    episodes.push(episode);
                }
            }
            let to_detect = to_detect.unwrap_or_else(|| panic!("seed {seed}: 87% never fired"));
            detections.push(to_detect);
            assert!(
                matches!(episodes[..], [Episode::Fired(_)]),
                "seed {seed}: once per episode: {episodes:?}"
            );
            assert!(monitor.alerting());

            let cleared: Vec<Episode> = samples(&mut rng, 0.94, 3_000)
                .into_iter()
                .filter_map(|score| monitor.record(score))
                .collect();
            assert!(
                matches!(cleared[..], [Episode::Cleared(_)]),
                "seed {seed}: {cleared:?}"
            );
        }
        detections.sort_unstable();
        let median = detections[detections.len() / 2];
        eprintln!("samples to detect 94% → 87% against a 90% bar: {detections:?}");
        assert!(median <= 1_000, "median {median}: {detections:?}");
    }

    #[test]
    fn nothing_fires_before_min_samples_and_proof_needs_the_whole_interval_above_the_bar() {
        let mut monitor = Monitor::new(policy());
        for _ in 0..u64::from(Shadow::DEFAULT_MIN_SAMPLES) - 1 {
            assert_eq!(monitor.record(0.0), None);
        }
        assert!(matches!(monitor.record(0.0), Some(Episode::Fired(_))));

        let mut monitor = Monitor::new(policy());
        for _ in 0..u64::from(Shadow::DEFAULT_MIN_SAMPLES) {
            monitor.record(1.0);
        }
        // 50 of 50: the interval's low end (0.929) clears a 90% bar.
        assert!(monitor.proven());
        let mut monitor = Monitor::new(MonitorPolicy {
            min_agreement: 0.95,
            ..policy()
        });
        for _ in 0..u64::from(Shadow::DEFAULT_MIN_SAMPLES) {
            monitor.record(1.0);
        }
        assert!(!monitor.proven(), "50 samples cannot prove 95%");
    }

    #[test]
    fn the_window_forgets_its_oldest_samples() {
        let mut monitor = Monitor::new(MonitorPolicy {
            window: 100,
            ..policy()
        });
        for _ in 0..100 {
            monitor.record(0.0);
        }
        for _ in 0..100 {
            monitor.record(1.0);
        }
        let evidence = monitor.evidence();
        assert_eq!((evidence.samples, evidence.agreement), (100, 1.0));
    }
}
