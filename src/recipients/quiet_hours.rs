//! Quiet hours: an action's `window: { start: "08:00", end: "21:00" }`, read in the recipient's time zone. A send
//! outside the window is deferred (a scheduled job, not a sleeping worker) to the window's next opening.
//!
//! A window whose end is before its start wraps midnight (`22:00`-`06:00`). Local times that do not exist (the hour
//! skipped when clocks go forward) open at the first instant after the gap; local times that happen twice (the
//! hour repeated when clocks go back) open at the first of them. [`next_local`] is the same rule for any time of day.

use chrono::{DateTime, Duration, LocalResult, NaiveDate, NaiveTime, TimeZone as _, Utc};
use chrono_tz::Tz;

/// A daily window of local time: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

impl Window {
    /// Parses `HH:MM` times; start and end must differ.
    pub fn parse(start: &str, end: &str) -> Result<Self, String> {
        let time = |text: &str, name: &str| {
            NaiveTime::parse_from_str(text, "%H:%M").map_err(|_| {
                format!("`window.{name}` must be a time of day as HH:MM (00:00-23:59)")
            })
        };
        let window = Self {
            start: time(start, "start")?,
            end: time(end, "end")?,
        };
        if window.start == window.end {
            return Err("`window.start` and `window.end` must differ".into());
        }
        Ok(window)
    }

    fn contains(&self, local: NaiveTime) -> bool {
        if self.start < self.end {
            local >= self.start && local < self.end
        } else {
            local >= self.start || local < self.end
        }
    }

    /// When a send at `now` may go out in `zone`: `None` if the window is open now, else the next opening.
    pub fn next_opening(&self, now: DateTime<Utc>, zone: Tz) -> Option<DateTime<Utc>> {
        let local = now.with_timezone(&zone);
        if self.contains(local.time()) {
            return None;
        }
        Some(next_local(now, self.start, zone))
    }
}

/// The first instant after `now` at which local time `time` starts in `zone` (today's if still ahead, else
/// tomorrow's), with the same rules for skipped and repeated local times. Digest windows `until` a time of day use
/// it too.
pub fn next_local(now: DateTime<Utc>, time: NaiveTime, zone: Tz) -> DateTime<Utc> {
    let today = now.with_timezone(&zone).date_naive();
    // Two days ahead covers a 25-hour day.
    (0..=2)
        .filter_map(|days| today.checked_add_signed(Duration::days(days)))
        .map(|date| opening_on(date, time, zone))
        .find(|opening| *opening > now)
        .unwrap_or(now + Duration::days(1))
}

/// The instant `time` starts on local `date` in `zone`, moved past a skipped hour if it falls in one.
fn opening_on(date: NaiveDate, time: NaiveTime, zone: Tz) -> DateTime<Utc> {
    let mut naive = date.and_time(time);
    // A gap is at most a few hours; step a minute at a time (bounded) to the first local time that exists.
    for _ in 0..=(24 * 60) {
        match zone.from_local_datetime(&naive) {
            LocalResult::Single(at) => return at.with_timezone(&Utc),
            LocalResult::Ambiguous(first, _) => return first.with_timezone(&Utc),
            LocalResult::None => naive += Duration::minutes(1),
        }
    }
    // Unreachable for real zones; fall back to reading the local time as UTC.
    naive.and_utc()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::{America::New_York, Europe::Paris};

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn the_next_local_time_of_day_across_a_dst_change() {
        let nine = NaiveTime::from_hms_opt(9, 0, 0).unwrap();
        // 23:00 on 7 March in New York (EST, UTC-5); clocks go forward that night: 09:00 is EDT (UTC-4), nine
        // hours later rather than ten.
        assert_eq!(
            next_local(utc("2026-03-08T04:00:00Z"), nine, New_York),
            utc("2026-03-08T13:00:00Z")
        );
        // 23:00 on 31 October (EDT); clocks go back that night: 09:00 is EST, eleven hours later.
        assert_eq!(
            next_local(utc("2026-11-01T03:00:00Z"), nine, New_York),
            utc("2026-11-01T14:00:00Z")
        );
        // Exactly 09:00 is not "next": the next is tomorrow's.
        assert_eq!(
            next_local(utc("2026-01-10T14:00:00Z"), nine, New_York),
            utc("2026-01-11T14:00:00Z")
        );
        // A time inside the skipped hour (02:30 on 8 March) comes at the first instant after the gap.
        let half_past_two = NaiveTime::from_hms_opt(2, 30, 0).unwrap();
        assert_eq!(
            next_local(utc("2026-03-08T04:00:00Z"), half_past_two, New_York),
            utc("2026-03-08T07:00:00Z")
        );
    }

    #[test]
    fn open_inside_the_window_and_deferred_outside() {
        let w = Window::parse("08:00", "21:00").unwrap();
        // 12:00 in Paris (UTC+1 in January): open.
        assert_eq!(w.next_opening(utc("2026-01-10T11:00:00Z"), Paris), None);
        // 22:30 in Paris: the next morning at 08:00 local, across the day boundary.
        assert_eq!(
            w.next_opening(utc("2026-01-10T21:30:00Z"), Paris),
            Some(utc("2026-01-11T07:00:00Z"))
        );
        // 05:00 in Paris: the same morning.
        assert_eq!(
            w.next_opening(utc("2026-01-10T04:00:00Z"), Paris),
            Some(utc("2026-01-10T07:00:00Z"))
        );
    }

    #[test]
    fn a_window_across_midnight() {
        let w = Window::parse("22:00", "06:00").unwrap();
        assert_eq!(w.next_opening(utc("2026-01-10T23:30:00Z"), Paris), None); // 00:30 local
        assert_eq!(
            w.next_opening(utc("2026-01-10T12:00:00Z"), Paris),
            Some(utc("2026-01-10T21:00:00Z"))
        );
    }

    #[test]
    fn across_dst_changes() {
        let w = Window::parse("08:00", "21:00").unwrap();
        // New York springs forward on 2026-03-08: 22:00 EST on the 7th (03:00Z on the 8th) opens at 08:00 EDT,
        // which is 12:00Z (not 13:00Z, as it would be under EST).
        assert_eq!(
            w.next_opening(utc("2026-03-08T03:00:00Z"), New_York),
            Some(utc("2026-03-08T12:00:00Z"))
        );
        // Paris falls back on 2026-10-25: 23:00 CEST on the 24th (21:00Z) opens at 08:00 CET, 07:00Z.
        assert_eq!(
            w.next_opening(utc("2026-10-24T21:00:00Z"), Paris),
            Some(utc("2026-10-25T07:00:00Z"))
        );
        // A window opening inside the skipped hour (02:30 does not exist in New York on 2026-03-08) opens at
        // 03:00 EDT, the first local time after the gap.
        let night = Window::parse("02:30", "05:00").unwrap();
        assert_eq!(
            night.next_opening(utc("2026-03-08T05:00:00Z"), New_York), // 00:00 EST
            Some(utc("2026-03-08T07:00:00Z"))
        );
    }

    #[test]
    fn bad_windows_are_refused() {
        assert!(Window::parse("8am", "21:00").is_err());
        assert!(Window::parse("08:00", "24:00").is_err());
        assert!(Window::parse("08:00", "08:00").is_err());
    }
}
