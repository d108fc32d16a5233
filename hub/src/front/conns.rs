//! Connection admission at the TCP level: a global cap, a per-address cap and a
//! per-address rate, checked before any byte is read so that a flood costs almost nothing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::settings::Limits;
use super::stats::Reject;

/// Entries idle this long are forgotten (bounds the table under address churn).
const FORGET_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct PerAddress {
    open: usize,
    tokens: f64,
    refilled: Instant,
}

/// Open connections, in total and per address.
#[derive(Debug, Default)]
pub struct Conns {
    state: Mutex<(usize, HashMap<IpAddr, PerAddress>)>,
}

/// Holds a connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct ConnGuard {
    conns: Arc<Conns>,
    ip: IpAddr,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut state = self.conns.lock();
        state.0 = state.0.saturating_sub(1);
        if let Some(entry) = state.1.get_mut(&self.ip) {
            entry.open = entry.open.saturating_sub(1);
        }
    }
}

/// Descriptors kept back for everything but client connections: listeners, the journal,
/// serial ports, uplinks, files opened at a reload.
const RESERVED_FDS: u64 = 256;

/// The most connections the process's open-file limit can hold. A connection costs one
/// descriptor, its socket (the embedded broker is reached in process). Past the limit
/// `accept` fails, and clients see resets instead of a clean refusal, so the cap is
/// lowered to fit (logged) rather than left to fail. (The `edgehub` binary raises its
/// soft limit to the hard one first.)
pub fn fit_to_open_file_limit(max_connections: usize) -> usize {
    use nix::sys::resource::{getrlimit, Resource};
    let Ok((limit, _)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return max_connections;
    };
    let fits = limit.saturating_sub(RESERVED_FDS).max(1);
    let fits = usize::try_from(fits).unwrap_or(usize::MAX);
    if fits < max_connections {
        tracing::warn!(
            configured = max_connections,
            allowed = fits,
            open_file_limit = limit,
            "limits.max_connections lowered to what the open-file limit holds (a connection \
             takes a descriptor); raise the limit (LimitNOFILE= in the systemd unit, \
             ulimit -n) to allow more"
        );
        return fits;
    }
    max_connections
}

impl Conns {
    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, HashMap<IpAddr, PerAddress>)> {
        super::lock(&self.state)
    }

    /// Takes a place for a new connection from `ip` under `limits` (those in force now: a
    /// reload may change them), or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, limits: &Limits) -> Result<ConnGuard, Reject> {
        let now = Instant::now();
        let mut state = self.lock();
        if state.0 >= limits.max_connections {
            return Err(Reject::TooManyConnections);
        }
        if state.1.len() > 4096 {
            state
                .1
                .retain(|_, e| e.open > 0 || now.duration_since(e.refilled) < FORGET_AFTER);
        }
        let rate = limits.connection_rate.max(1) as f64;
        let entry = state.1.entry(ip).or_insert(PerAddress {
            open: 0,
            tokens: rate,
            refilled: now,
        });
        entry.tokens =
            (entry.tokens + now.duration_since(entry.refilled).as_secs_f64() * rate).min(rate);
        entry.refilled = now;
        if entry.open >= limits.max_connections_per_address {
            return Err(Reject::TooManyConnections);
        }
        if entry.tokens < 1.0 {
            return Err(Reject::ConnectionRate);
        }
        entry.tokens -= 1.0;
        entry.open += 1;
        state.0 += 1;
        Ok(ConnGuard {
            conns: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.lock().0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per: usize, rate: u32) -> Limits {
        Limits {
            max_connections: total,
            max_connections_per_address: per,
            connection_rate: rate,
            ..Limits::default()
        }
    }

    #[test]
    fn the_per_address_cap_refuses_the_next_and_frees_on_drop() {
        let conns = Arc::new(Conns::default());
        let limits = limits(10, 2, 100);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = conns.admit(ip, &limits).unwrap();
        let _b = conns.admit(ip, &limits).unwrap();
        assert_eq!(
            conns.admit(ip, &limits).unwrap_err(),
            Reject::TooManyConnections
        );
        assert!(conns.admit("10.0.0.2".parse().unwrap(), &limits).is_ok());
        drop(a);
        assert!(conns.admit(ip, &limits).is_ok());
    }

    #[test]
    fn the_total_cap_counts_every_address() {
        let conns = Arc::new(Conns::default());
        let limits = limits(2, 10, 100);
        let _a = conns.admit("10.0.0.1".parse().unwrap(), &limits).unwrap();
        let _b = conns.admit("10.0.0.2".parse().unwrap(), &limits).unwrap();
        assert_eq!(
            conns
                .admit("10.0.0.3".parse().unwrap(), &limits)
                .unwrap_err(),
            Reject::TooManyConnections
        );
        assert_eq!(conns.open(), 2);
    }

    #[test]
    fn a_burst_over_the_rate_is_refused() {
        let conns = Arc::new(Conns::default());
        let limits = limits(1000, 1000, 5);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let guards: Vec<_> = (0..5).map(|_| conns.admit(ip, &limits).unwrap()).collect();
        assert_eq!(
            conns.admit(ip, &limits).unwrap_err(),
            Reject::ConnectionRate
        );
        drop(guards);
    }
}
