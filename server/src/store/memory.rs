//! The embedded store: this process is the whole city. Changes apply at once, there is no other instance to
//! hear from or tell, and every question is answered by this instance's own presence.

use std::{sync::Arc, time::Duration};

use futures::{future::BoxFuture, FutureExt};
use protocol::track::{DriverFix, NearDriver};

use super::{Answer, Feed, Lookups, StateOfRecord, Store, TrackingBus};
use crate::state::{
    heat::{HeatState, Increment},
    presence::{DriverState, PresenceMap},
};

pub(crate) fn open() -> Store {
    Store {
        name: "embedded (in-memory)",
        record: Box::new(Embedded),
        feed: Feed::default(),
        bus: Arc::new(Embedded),
        lookups: Arc::new(Embedded),
        written: None,
    }
}

struct Embedded;

impl StateOfRecord for Embedded {
    fn record(&mut self, increment: Increment, heat: &mut HeatState) {
        heat.apply(increment);
    }

    fn record_presence(&mut self, _: &DriverState) {}

    fn record_forgotten(&mut self, _: &str) {}

    fn end_tick(&mut self) {}

    fn reseed(&mut self, _: &PresenceMap) {}
}

impl TrackingBus for Embedded {
    fn tracked_elsewhere(&self, _: &str) -> bool {
        false
    }

    fn publish(&self, _: &str, _: &str) {}

    fn follow(&self, _: &str) {}

    fn unfollow(&self, _: &str) {}
}

impl Lookups for Embedded {
    fn last_fix<'a>(&'a self, _: &'a str) -> Answer<'a, Option<DriverFix>> {
        async { Ok(None) }.boxed()
    }

    fn near(&self, _: f64, _: f64, _: f64, _: usize) -> Answer<'_, Option<Vec<NearDriver>>> {
        async { Ok(None) }.boxed()
    }

    fn revoke_shares<'a>(&'a self, _: &'a str, _: i64, _: Duration) -> Answer<'a, ()> {
        async { Ok(()) }.boxed()
    }

    fn shares_revoked_before<'a>(&'a self, _: &'a str) -> Answer<'a, Option<i64>> {
        async { Ok(None) }.boxed()
    }

    fn healthy(&self) -> BoxFuture<'_, Option<bool>> {
        async { None }.boxed()
    }
}
