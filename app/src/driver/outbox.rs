//! The driver page's sending rules, as plain data with no browser in them, so they are tested natively:
//! which fixes are worth sending and when, the bounded queue they wait in while no connection is up, and what
//! counts as delivered (only what the server acknowledged; what was in flight when a socket dropped is sent
//! again, first).

use std::collections::{BTreeMap, VecDeque};

use protocol::{
    driver::{DriverClientMsg, Ping},
    geo::distance_m,
    validate::{check_ping, Invalid, Limits},
};

/// Fixes kept while offline (at one per second, about a minute and a half; within the server's burst allowance).
pub const MAX_QUEUED: usize = 100;
/// At most one ping per this many milliseconds.
pub const MIN_INTERVAL_MS: f64 = 1_000.0;
/// A new fix is worth sending before the heartbeat when it moved at least this far.
pub const MIN_MOVE_M: f64 = 10.0;
/// A stored driver token with less than this left is renewed when the page loads.
pub const RENEW_BEFORE_MS: f64 = 30.0 * 60_000.0;

/// The rules the server sets for the page (its site settings).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    /// Fixes less accurate than this are not sent, in metres.
    pub max_accuracy_m: f64,
    /// While sharing, at least one ping this often, in milliseconds.
    pub heartbeat_ms: f64,
}

/// What happened to the fixes so far, as the page shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Pings handed to the socket or the server function.
    pub sent: u64,
    /// Pings the server confirmed it took.
    pub acked: u64,
    /// Pings dropped because the queue was full (the oldest go first).
    pub dropped: u64,
    /// Fixes not sent because they were less accurate than the limit.
    pub inaccurate: u64,
}

/// Why a fix from the phone is not sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    /// Less accurate than the limit (metres).
    Inaccurate { accuracy_m: f64, limit_m: f64 },
    /// A fix the server would refuse anyway.
    Invalid(Invalid),
}

/// What a refused socket message means for the ping it carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Worth sending again (the server was busy or stopping): back to the front of the queue.
    Later,
    /// Refused for good (the ping itself is wrong).
    Never,
}

/// The fixes on their way out: the newest worth sending, the queue, and what is in flight on the socket.
#[derive(Debug)]
pub struct Outbox {
    rules: Rules,
    /// Waiting for a connection, oldest first.
    queue: VecDeque<Ping>,
    /// Sent on the socket, not yet acknowledged, by sequence number.
    in_flight: BTreeMap<u64, Ping>,
    next_seq: u64,
    /// The newest fix good enough to send (the heartbeat repeats it).
    last_fix: Option<Ping>,
    /// `last_fix` moved far enough to be worth sending, but came too soon after the previous ping.
    move_pending: bool,
    /// When (page clock, ms) and where the last ping was queued.
    last_sent: Option<(f64, f64, f64)>,
    counts: Counts,
}

impl Outbox {
    pub fn new(rules: Rules) -> Outbox {
        Outbox {
            rules,
            queue: VecDeque::new(),
            in_flight: BTreeMap::new(),
            next_seq: 1,
            last_fix: None,
            move_pending: false,
            last_sent: None,
            counts: Counts::default(),
        }
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Fixes waiting for a connection.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// A fix from the phone at `now_ms` (page clock): kept as the newest to send, or refused. A kept fix is queued
    /// at once when it moved far enough and the last ping is a second old ([`Outbox::queue_due`]).
    pub fn offer(&mut self, ping: Ping, now_ms: f64) -> Result<(), Refused> {
        let accuracy_m = ping.accuracy_m.unwrap_or(0.0);
        if accuracy_m > self.rules.max_accuracy_m {
            self.counts.inaccurate += 1;
            return Err(Refused::Inaccurate { accuracy_m, limit_m: self.rules.max_accuracy_m });
        }
        check_ping(&ping, now_ms as i64, &Limits::default()).map_err(Refused::Invalid)?;
        self.move_pending =
            self.last_sent.is_none_or(|(_, lat, lon)| distance_m(lat, lon, ping.lat, ping.lon) >= MIN_MOVE_M);
        self.last_fix = Some(ping);
        self.queue_due(now_ms);
        Ok(())
    }

    /// Queues the newest fix if it is due: a move, at most one ping per [`MIN_INTERVAL_MS`]; otherwise, when
    /// nothing went out for the heartbeat time, the same position again with a fresh time (the driver is still
    /// there, still online).
    pub fn queue_due(&mut self, now_ms: f64) {
        let Some(fix) = self.last_fix.clone() else { return };
        let since = self.last_sent.map_or(f64::INFINITY, |(when, _, _)| now_ms - when);
        if self.move_pending && since >= MIN_INTERVAL_MS {
            self.move_pending = false;
            self.enqueue(fix, now_ms);
        } else if since >= self.rules.heartbeat_ms {
            self.enqueue(Ping { ts: now_ms as i64, ..fix }, now_ms);
        }
    }

    fn enqueue(&mut self, ping: Ping, now_ms: f64) {
        if self.queue.len() >= MAX_QUEUED {
            self.queue.pop_front();
            self.counts.dropped += 1;
        }
        self.last_sent = Some((now_ms, ping.lat, ping.lon));
        self.queue.push_back(ping);
    }

    /// The next queued ping as a socket message, numbered and recorded as in flight.
    pub fn next_for_socket(&mut self) -> Option<String> {
        let ping = self.queue.pop_front()?;
        let seq = self.next_seq;
        self.next_seq += 1;
        let message =
            serde_json::to_string(&DriverClientMsg::Ping { seq: Some(seq), ping: ping.clone() }).expect("serialises");
        self.in_flight.insert(seq, ping);
        self.counts.sent += 1;
        Some(message)
    }

    /// The server acknowledged message `seq`; whether it was one of ours and the ping was taken.
    pub fn acked(&mut self, seq: u64, accepted: u32) -> bool {
        let taken = self.in_flight.remove(&seq).is_some() && accepted > 0;
        if taken {
            self.counts.acked += 1;
        }
        taken
    }

    /// The server refused message `seq`; whether it was one of ours.
    pub fn refused(&mut self, seq: u64, retry: Retry) -> bool {
        let Some(ping) = self.in_flight.remove(&seq) else { return false };
        if retry == Retry::Later {
            self.queue.push_front(ping);
        }
        true
    }

    /// The socket dropped: whatever was in flight may not have arrived, so it goes back to the front of the queue,
    /// in the order it was sent.
    pub fn connection_lost(&mut self) {
        for (_, ping) in std::mem::take(&mut self.in_flight).into_iter().rev() {
            self.queue.push_front(ping);
        }
    }

    /// The oldest queued ping, for the server function (one at a time, while the socket is down).
    pub fn front(&self) -> Option<&Ping> {
        self.queue.front()
    }

    /// The server function answered for the oldest queued ping: it leaves the queue, acknowledged if taken.
    pub fn front_delivered(&mut self, accepted: bool) {
        if self.queue.pop_front().is_some() {
            self.counts.sent += 1;
            self.counts.acked += u64::from(accepted);
        }
    }
}

/// What to do with a stored driver token whose end is `expires_ms`, at `now_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Time enough left: use it.
    Keep,
    /// Near its end: ask for a fresh token with it.
    Renew,
    /// Ended (or none stored): enter as a new driver.
    Enter,
}

pub fn renewal(expires_ms: Option<f64>, now_ms: f64) -> Renewal {
    match expires_ms.map(|at| at - now_ms) {
        Some(left) if left > RENEW_BEFORE_MS => Renewal::Keep,
        Some(left) if left > 0.0 => Renewal::Renew,
        _ => Renewal::Enter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: f64 = 1_800_000_000_000.0;
    const RULES: Rules = Rules { max_accuracy_m: 100.0, heartbeat_ms: 10_000.0 };

    fn fix(lat: f64, at: f64) -> Ping {
        Ping {
            driver_id: "drv-1".into(),
            lat,
            lon: 3.35,
            ts: at as i64,
            accuracy_m: Some(10.0),
            heading_deg: None,
            speed_mps: None,
        }
    }

    /// About `m` metres north of latitude 6.5.
    fn north(m: f64) -> f64 {
        6.5 + m / 111_320.0
    }

    #[test]
    fn moves_go_out_at_most_once_a_second_and_a_still_driver_every_heartbeat() {
        let mut out = Outbox::new(RULES);
        out.offer(fix(6.5, T0), T0).unwrap();
        assert_eq!(out.queued(), 1, "the first fix goes at once");
        out.offer(fix(north(50.0), T0 + 300.0), T0 + 300.0).unwrap();
        assert_eq!(out.queued(), 1, "a move 0.3 s later waits");
        out.queue_due(T0 + 1_000.0);
        assert_eq!(out.queued(), 2, "and goes once a second has passed");
        out.offer(fix(north(55.0), T0 + 2_500.0), T0 + 2_500.0).unwrap();
        assert_eq!(out.queued(), 2, "5 m is not a move");
        out.queue_due(T0 + 10_999.0);
        assert_eq!(out.queued(), 2);
        out.queue_due(T0 + 11_000.0);
        assert_eq!(out.queued(), 3, "the heartbeat, 10 s after the last ping");
    }

    #[test]
    fn inaccurate_and_invalid_fixes_are_not_sent() {
        let mut out = Outbox::new(RULES);
        let vague = Ping { accuracy_m: Some(250.0), ..fix(6.5, T0) };
        assert_eq!(out.offer(vague, T0), Err(Refused::Inaccurate { accuracy_m: 250.0, limit_m: 100.0 }));
        assert!(matches!(out.offer(fix(95.0, T0), T0), Err(Refused::Invalid(_))));
        assert_eq!((out.queued(), out.counts().inaccurate), (0, 1));
        out.queue_due(T0 + 60_000.0);
        assert_eq!(out.queued(), 0, "nothing to repeat");
    }

    #[test]
    fn the_queue_keeps_the_newest_hundred() {
        let mut out = Outbox::new(RULES);
        for i in 0..=MAX_QUEUED {
            let at = T0 + i as f64 * 1_000.0;
            out.offer(fix(north(20.0 * i as f64), at), at).unwrap();
        }
        assert_eq!((out.queued(), out.counts().dropped), (MAX_QUEUED, 1));
        assert_eq!(out.front().unwrap().ts, (T0 + 1_000.0) as i64, "the oldest went first");
    }

    #[test]
    fn only_acknowledged_pings_count_and_what_was_in_flight_is_sent_again_first() {
        let mut out = Outbox::new(RULES);
        for i in 0..3 {
            let at = T0 + i as f64 * 1_000.0;
            out.offer(fix(north(20.0 * i as f64), at), at).unwrap();
        }
        let first = out.next_for_socket().unwrap();
        assert!(first.contains(r#""seq":1"#), "{first}");
        out.next_for_socket().unwrap();
        assert!(out.acked(1, 1));
        out.connection_lost();
        assert_eq!(out.counts(), Counts { sent: 2, acked: 1, dropped: 0, inaccurate: 0 });
        assert_eq!(out.queued(), 2);
        assert_eq!(out.front().unwrap().ts, (T0 + 1_000.0) as i64, "the unacknowledged one is first again");
        let again = out.next_for_socket().unwrap();
        assert!(again.contains(r#""seq":3"#), "{again}");
        assert!(out.refused(3, Retry::Later));
        assert_eq!(out.queued(), 2, "a busy server's refusal is retried");
        out.next_for_socket().unwrap();
        assert!(out.refused(4, Retry::Never));
        assert_eq!(out.queued(), 1);
        assert!(!out.acked(99, 1), "not ours");
        out.front_delivered(true);
        assert_eq!((out.queued(), out.counts().acked), (0, 2), "the server function's answer counts too");
    }

    #[test]
    fn tokens_are_renewed_in_their_last_half_hour() {
        assert_eq!(renewal(Some(T0 + 2.0 * RENEW_BEFORE_MS), T0), Renewal::Keep);
        assert_eq!(renewal(Some(T0 + RENEW_BEFORE_MS / 2.0), T0), Renewal::Renew);
        assert_eq!(renewal(Some(T0 - 1.0), T0), Renewal::Enter);
        assert_eq!(renewal(None, T0), Renewal::Enter);
    }
}
