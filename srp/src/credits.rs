//! The request limit of one channel (SRP r16a 5.5.3, notes §2 "credit rules").
//!
//! Every SRP_CMD and SRP_TSK_MGMT uses one credit and one of our posted
//! receives. We grant at most (posted receives − 1): the spare receive takes the
//! initiator's SRP_CRED_RSP / SRP_AER_RSP, which use no credit. Each SRP_RSP
//! returns exactly one credit, plus those of commands that ended without a
//! response (aborted), so that the initiator's count never drifts. Invariant:
//! `held + in_flight + owed == granted`.

use thiserror::Error;

/// The credits a login grants for `rq_size` posted receives; `None` if there is
/// no room for one credit and the spare.
pub fn initial_grant(rq_size: u32) -> Option<u32> {
    rq_size.checked_sub(1).filter(|g| *g > 0)
}

/// The initiator sent a request it had no credit for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("request without a credit: the initiator overran the {granted} credits granted")]
pub struct Overrun {
    pub granted: u32,
}

/// Credit accounting of one channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credits {
    granted: u32,
    /// Credits the initiator holds (may still use).
    held: u32,
    /// Requests received and not yet answered or dropped.
    in_flight: u32,
    /// Credits of requests that ended without a response, to return with the
    /// next response or an SRP_CRED_REQ.
    owed: u32,
    /// An SRP_CRED_REQ is out and its SRP_CRED_RSP (on the spare receive) not back.
    cred_req_out: bool,
}

impl Credits {
    /// Accounting for a channel with `rq_size` posted receives, after the login
    /// response granted [`initial_grant`]`(rq_size)`.
    pub fn new(rq_size: u32) -> Option<Self> {
        let granted = initial_grant(rq_size)?;
        Some(Credits {
            granted,
            held: granted,
            in_flight: 0,
            owed: 0,
            cred_req_out: false,
        })
    }

    pub fn granted(&self) -> u32 {
        self.granted
    }

    /// Credits the initiator may still use.
    pub fn held(&self) -> u32 {
        self.held
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// An SRP_CMD or SRP_TSK_MGMT arrived (parsed or not): it used a credit.
    pub fn on_request(&mut self) -> Result<(), Overrun> {
        self.held = self.held.checked_sub(1).ok_or(Overrun {
            granted: self.granted,
        })?;
        self.in_flight += 1;
        Ok(())
    }

    /// A request is answered with an SRP_RSP: its REQUEST LIMIT DELTA.
    pub fn on_response(&mut self) -> u32 {
        if self.in_flight == 0 {
            // Nothing outstanding (a bug upstream): return nothing rather than
            // grant more than the receives we posted.
            return 0;
        }
        self.in_flight -= 1;
        let delta = 1 + std::mem::take(&mut self.owed);
        self.held += delta;
        delta
    }

    /// A request ended without a response (aborted, or unparseable without a
    /// tag to answer): its credit goes back with the next response.
    pub fn on_dropped(&mut self) {
        if self.in_flight > 0 {
            self.in_flight -= 1;
            self.owed += 1;
        }
    }

    /// If credits are owed and nothing in flight would carry them back, the
    /// REQUEST LIMIT DELTA of an SRP_CRED_REQ to send now (one at a time: its
    /// answer needs the spare receive).
    pub fn cred_req(&mut self) -> Option<u32> {
        if self.owed == 0 || self.in_flight > 0 || self.cred_req_out {
            return None;
        }
        self.cred_req_out = true;
        let delta = std::mem::take(&mut self.owed);
        self.held += delta;
        Some(delta)
    }

    /// The SRP_CRED_RSP came back: the spare receive is free again.
    pub fn on_cred_rsp(&mut self) {
        self.cred_req_out = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invariant(c: &Credits) {
        assert_eq!(c.held + c.in_flight + c.owed, c.granted, "{c:?}");
    }

    #[test]
    fn grant_leaves_a_spare() {
        assert_eq!(initial_grant(128), Some(127));
        assert_eq!(initial_grant(2), Some(1));
        assert_eq!(initial_grant(1), None);
        assert_eq!(initial_grant(0), None);
        assert!(Credits::new(1).is_none());
    }

    #[test]
    fn one_credit_back_per_response() {
        let mut c = Credits::new(4).unwrap();
        assert_eq!(c.held(), 3);
        for _ in 0..3 {
            c.on_request().unwrap();
            invariant(&c);
        }
        assert_eq!(c.on_request(), Err(Overrun { granted: 3 }));
        assert_eq!(c.on_response(), 1);
        assert_eq!(c.held(), 1);
        invariant(&c);
    }

    #[test]
    fn aborted_credits_ride_on_the_next_response() {
        let mut c = Credits::new(8).unwrap();
        for _ in 0..3 {
            c.on_request().unwrap();
        }
        c.on_dropped();
        c.on_dropped();
        invariant(&c);
        assert_eq!(c.cred_req(), None, "a response is still due");
        assert_eq!(c.on_response(), 3);
        assert_eq!(c.held(), 7);
        invariant(&c);
        // Nothing to answer: no credit appears from nowhere.
        assert_eq!(c.on_response(), 0);
        c.on_dropped();
        invariant(&c);
    }

    #[test]
    fn cred_req_when_nothing_would_carry_them() {
        let mut c = Credits::new(8).unwrap();
        c.on_request().unwrap();
        c.on_request().unwrap();
        c.on_dropped();
        c.on_dropped();
        assert_eq!(c.cred_req(), Some(2));
        invariant(&c);
        assert_eq!(c.held(), 7);
        c.on_request().unwrap();
        c.on_dropped();
        assert_eq!(c.cred_req(), None, "the first one's answer is not back");
        c.on_cred_rsp();
        assert_eq!(c.cred_req(), Some(1));
        invariant(&c);
    }
}
