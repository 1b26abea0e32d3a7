//! One I_T nexus across the channels of one (initiator port id, target port id)
//! pair (SRP r16a 5.4, ib_srpt's `srpt_nexus`). A multichannel login joins the
//! pair's current nexus; a single-channel login ends every channel of the pair
//! and starts a fresh nexus, so that the old channels' teardown (which aborts
//! their nexus's commands in the engine) cannot touch the new channel's commands.
//! The engine keys reservations and unit attentions on the initiator's name, not
//! on the nexus object, so they carry over.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use engine::{LunMap, Nexus, TargetPort};
use thiserror::Error;

use crate::exec;
use crate::login::Multichannel;

/// The transport's name for a channel (unique within a registry).
pub type ChannelId = u64;

/// The default limit of channels per nexus (Linux defaults to one per CPU).
pub const DEFAULT_MAX_CHANNELS: usize = 16;

type PairKey = ([u8; 16], [u8; 16]);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum RegisterError {
    #[error("channel {0} is already registered")]
    Duplicate(ChannelId),
    /// Answer with SRP_LOGIN_REJ CHANNEL LIMIT REACHED.
    #[error("the nexus already has {0} channels")]
    ChannelLimit(usize),
}

/// What registering a channel decided.
#[derive(Debug)]
pub struct Registration {
    pub nexus: Arc<Nexus>,
    /// Channels a single-channel login ends: disconnect them.
    pub disconnect: Vec<ChannelId>,
}

/// What unregistering a channel left.
#[derive(Debug)]
pub struct Unregistered {
    pub nexus: Arc<Nexus>,
    /// It was the nexus's last channel: the I_T nexus is gone
    /// (`Worker::nexus_lost`).
    pub last: bool,
}

#[derive(Debug, Default)]
struct State {
    /// Each channel: its pair and its nexus.
    channels: HashMap<ChannelId, (PairKey, Arc<Nexus>)>,
    /// The nexus new multichannel logins of a pair join.
    current: HashMap<PairKey, Arc<Nexus>>,
}

/// The channels of one SRP target port.
#[derive(Debug)]
pub struct ChannelRegistry {
    target: Arc<TargetPort>,
    luns: Arc<LunMap>,
    max_channels: usize,
    state: Mutex<State>,
}

impl ChannelRegistry {
    pub fn new(target: Arc<TargetPort>, luns: Arc<LunMap>, max_channels: usize) -> Self {
        ChannelRegistry {
            target,
            luns,
            max_channels: max_channels.max(1),
            state: Mutex::new(State::default()),
        }
    }

    pub fn target(&self) -> &Arc<TargetPort> {
        &self.target
    }

    pub fn luns(&self) -> &Arc<LunMap> {
        &self.luns
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers channel `ch` of the pair after a login was accepted.
    pub fn register(
        &self,
        i_port_id: [u8; 16],
        t_port_id: [u8; 16],
        ch: ChannelId,
        mode: Multichannel,
    ) -> Result<Registration, RegisterError> {
        let key = (i_port_id, t_port_id);
        let mut st = self.lock();
        if st.channels.contains_key(&ch) {
            return Err(RegisterError::Duplicate(ch));
        }
        let (nexus, disconnect) = match (mode, st.current.get(&key)) {
            (Multichannel::Multi, Some(n)) => {
                let n = n.clone();
                let members = st.channels.values().filter(|(_, x)| x.id == n.id).count();
                if members >= self.max_channels {
                    return Err(RegisterError::ChannelLimit(members));
                }
                (n, Vec::new())
            }
            (Multichannel::Multi, None) => (self.fresh(&mut st, key, &i_port_id), Vec::new()),
            (Multichannel::Single, _) => {
                let mut old: Vec<ChannelId> = st
                    .channels
                    .iter()
                    .filter(|(_, (k, _))| *k == key)
                    .map(|(c, _)| *c)
                    .collect();
                old.sort_unstable();
                (self.fresh(&mut st, key, &i_port_id), old)
            }
        };
        st.channels.insert(ch, (key, nexus.clone()));
        Ok(Registration { nexus, disconnect })
    }

    fn fresh(&self, st: &mut State, key: PairKey, i_port_id: &[u8; 16]) -> Arc<Nexus> {
        let n = exec::make_nexus(i_port_id, &self.target, &self.luns);
        st.current.insert(key, n.clone());
        n
    }

    /// Forgets channel `ch` (its connection is gone); `None` if unknown.
    pub fn unregister(&self, ch: ChannelId) -> Option<Unregistered> {
        let mut st = self.lock();
        let (key, nexus) = st.channels.remove(&ch)?;
        let last = !st.channels.values().any(|(_, n)| n.id == nexus.id);
        if last && st.current.get(&key).is_some_and(|n| n.id == nexus.id) {
            st.current.remove(&key);
        }
        Some(Unregistered { nexus, last })
    }

    /// The nexus of channel `ch`.
    pub fn nexus_of(&self, ch: ChannelId) -> Option<Arc<Nexus>> {
        self.lock().channels.get(&ch).map(|(_, n)| n.clone())
    }

    /// Every channel and the id of its nexus, by channel id (for listings).
    pub fn channels(&self) -> Vec<(ChannelId, Arc<Nexus>)> {
        let mut v: Vec<_> = self
            .lock()
            .channels
            .iter()
            .map(|(c, (_, n))| (*c, n.clone()))
            .collect();
        v.sort_by_key(|(c, _)| *c);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::Protocol;

    fn registry(max: usize) -> ChannelRegistry {
        let port = Arc::new(TargetPort {
            name: "srp0".into(),
            protocol: Protocol::Srp,
            relative_id: 3,
            group_id: 1,
        });
        ChannelRegistry::new(port, LunMap::new(), max)
    }

    const I1: [u8; 16] = [1; 16];
    const I2: [u8; 16] = [2; 16];
    const T: [u8; 16] = [9; 16];

    #[test]
    fn multichannel_logins_share_one_nexus() {
        let r = registry(4);
        let a = r.register(I1, T, 10, Multichannel::Single).unwrap();
        assert!(a.disconnect.is_empty());
        let b = r.register(I1, T, 11, Multichannel::Multi).unwrap();
        assert!(b.disconnect.is_empty());
        assert_eq!(a.nexus.id, b.nexus.id);
        assert_eq!(
            &*a.nexus.key.initiator,
            "0x01010101010101010101010101010101"
        );
        assert_eq!(a.nexus.key.relative_port, 3);
        // Another initiator port: its own nexus.
        let c = r.register(I2, T, 12, Multichannel::Multi).unwrap();
        assert_ne!(c.nexus.id, a.nexus.id);
        // The first channel going leaves the nexus up; the second ends it.
        let u = r.unregister(10).unwrap();
        assert!(!u.last);
        let u = r.unregister(11).unwrap();
        assert!(u.last);
        assert_eq!(u.nexus.id, a.nexus.id);
        assert!(r.unregister(11).is_none());
        // A later multichannel login starts afresh.
        let d = r.register(I1, T, 13, Multichannel::Multi).unwrap();
        assert_ne!(d.nexus.id, a.nexus.id);
    }

    #[test]
    fn single_channel_login_ends_the_old_channels() {
        let r = registry(4);
        let a = r.register(I1, T, 1, Multichannel::Single).unwrap();
        r.register(I1, T, 2, Multichannel::Multi).unwrap();
        r.register(I2, T, 3, Multichannel::Single).unwrap();
        let s = r.register(I1, T, 4, Multichannel::Single).unwrap();
        assert_eq!(s.disconnect, vec![1, 2]);
        assert_ne!(s.nexus.id, a.nexus.id, "a fresh nexus");
        assert_eq!(s.nexus.key, a.nexus.key, "the same I_T identity");
        // A multichannel login now joins the new nexus.
        let m = r.register(I1, T, 5, Multichannel::Multi).unwrap();
        assert_eq!(m.nexus.id, s.nexus.id);
        // The old channels' teardown reports the old nexus lost, and does not
        // disturb the new one.
        assert!(!r.unregister(1).unwrap().last);
        let u = r.unregister(2).unwrap();
        assert!(u.last);
        assert_eq!(u.nexus.id, a.nexus.id);
        assert_eq!(r.nexus_of(5).map(|n| n.id), Some(s.nexus.id));
        let m2 = r.register(I1, T, 6, Multichannel::Multi).unwrap();
        assert_eq!(m2.nexus.id, s.nexus.id);
        assert_eq!(
            r.channels().iter().map(|(c, _)| *c).collect::<Vec<_>>(),
            vec![3, 4, 5, 6]
        );
    }

    #[test]
    fn limits_and_duplicates() {
        let r = registry(2);
        r.register(I1, T, 1, Multichannel::Multi).unwrap();
        r.register(I1, T, 2, Multichannel::Multi).unwrap();
        assert_eq!(
            r.register(I1, T, 3, Multichannel::Multi).unwrap_err(),
            RegisterError::ChannelLimit(2)
        );
        assert_eq!(
            r.register(I2, T, 2, Multichannel::Multi).unwrap_err(),
            RegisterError::Duplicate(2)
        );
        // A single-channel login is never limited: it replaces.
        let s = r.register(I1, T, 3, Multichannel::Single).unwrap();
        assert_eq!(s.disconnect, vec![1, 2]);
    }
}
