//! kube-proxy's network programming latency: from the Pod or Service change behind an
//! EndpointSlice update (the slice's trigger time) to the datapath serving it.
//!
//! As kube-proxy (`pkg/proxy/endpointschangetracker.go`) does it: one sample per slice whose
//! trigger time is new, taken once the sync that carries it is in the maps; nothing for slices
//! without one (Services alone have none); nothing for changes from before the daemon
//! started, which it could not have programmed sooner and which would otherwise fill the
//! histogram with the age of every slice on each restart.

use std::time::{Duration, SystemTime};

use crate::model::TriggerTimes;

/// The trigger times already measured, so that each is measured once.
#[derive(Debug)]
pub struct ProgrammingLatency {
    /// Trigger times at or before this are not measured (kube-proxy's `trackerStartTime`).
    started: SystemTime,
    /// Per slice still present, the newest trigger time measured or passed over.
    seen: TriggerTimes,
}

impl ProgrammingLatency {
    pub fn new(started: SystemTime) -> Self {
        ProgrammingLatency {
            started,
            seen: TriggerTimes::new(),
        }
    }

    /// Call when a state with `trigger_times` is in the maps, at `now`: the latency of every
    /// slice whose trigger time is newer than the one seen for it before. A trigger time after
    /// `now` (the controller's clock runs ahead of this node's) counts as zero: the change was
    /// programmed, just not measurably late. A slice that is gone is forgotten, so if it comes
    /// back its trigger time is new again (kube-proxy drops a deleted slice's times too).
    pub fn programmed(&mut self, trigger_times: &TriggerTimes, now: SystemTime) -> Vec<Duration> {
        let mut latencies = Vec::new();
        let mut seen = TriggerTimes::new();
        for (slice, &time) in trigger_times {
            let last = self.seen.get(slice).copied();
            let new = last.is_none_or(|last| time > last);
            if new && time > self.started {
                latencies.push(now.duration_since(time).unwrap_or(Duration::ZERO));
            }
            seen.insert(slice.clone(), last.map_or(time, |last| last.max(time)));
        }
        self.seen = seen;
        latencies
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SliceName;

    const START: u64 = 1_800_000_000;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(START + seconds)
    }

    fn times(slices: &[(&str, u64)]) -> TriggerTimes {
        slices
            .iter()
            .map(|&(name, seconds)| {
                let name = SliceName {
                    namespace: "default".into(),
                    name: name.into(),
                };
                (name, at(seconds))
            })
            .collect()
    }

    fn secs(latencies: &[Duration]) -> Vec<u64> {
        latencies.iter().map(Duration::as_secs).collect()
    }

    #[test]
    fn each_trigger_time_is_measured_once_per_slice() {
        let mut latency = ProgrammingLatency::new(at(0));
        assert_eq!(
            secs(&latency.programmed(&times(&[("a", 10), ("b", 12)]), at(15))),
            [5, 3]
        );
        // Another sync (a Service changed, or b's endpoints without a new trigger time):
        // nothing new to measure.
        assert_eq!(
            latency.programmed(&times(&[("a", 10), ("b", 12)]), at(20)),
            Vec::<Duration>::new()
        );
        // b changes again: only b.
        assert_eq!(
            secs(&latency.programmed(&times(&[("a", 10), ("b", 30)]), at(31))),
            [1]
        );
        // A trigger time going back (a slice rewritten from an older copy) is not new.
        assert_eq!(
            latency.programmed(&times(&[("a", 10), ("b", 25)]), at(40)),
            Vec::<Duration>::new()
        );
        assert_eq!(
            latency.programmed(&times(&[("a", 10), ("b", 30)]), at(41)),
            Vec::<Duration>::new()
        );
    }

    #[test]
    fn slices_without_a_trigger_time_give_nothing() {
        let mut latency = ProgrammingLatency::new(at(0));
        assert_eq!(
            latency.programmed(&TriggerTimes::new(), at(5)),
            Vec::<Duration>::new()
        );
    }

    #[test]
    fn changes_from_before_the_start_are_not_measured() {
        let mut latency = ProgrammingLatency::new(at(100));
        // The first list after a restart: every slice's last change is old news...
        assert_eq!(
            latency.programmed(&times(&[("a", 50), ("b", 100)]), at(101)),
            Vec::<Duration>::new()
        );
        // ... and stays so; a change after the start is measured.
        assert_eq!(
            secs(&latency.programmed(&times(&[("a", 50), ("b", 105)]), at(107))),
            [2]
        );
    }

    #[test]
    fn a_trigger_time_ahead_of_this_clock_counts_as_zero() {
        let mut latency = ProgrammingLatency::new(at(0));
        assert_eq!(
            latency.programmed(&times(&[("a", 20)]), at(19)),
            [Duration::ZERO]
        );
    }

    #[test]
    fn a_deleted_slice_is_forgotten() {
        let mut latency = ProgrammingLatency::new(at(0));
        assert_eq!(latency.programmed(&times(&[("a", 10)]), at(11)).len(), 1);
        assert_eq!(
            latency.programmed(&times(&[]), at(12)),
            Vec::<Duration>::new()
        );
        // Created again by the controller (same trigger time: the same Pod change).
        assert_eq!(secs(&latency.programmed(&times(&[("a", 10)]), at(13))), [3]);
    }
}
