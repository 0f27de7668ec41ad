//! Slowing password guessing without letting an attacker lock a clinician out.
//!
//! Failures are counted per (account, address): after three in a row, each next attempt from
//! that address waits 2^(n-3) seconds (at most a minute) before it is even checked. Per
//! address, at most 100 failures an hour (any accounts, existing or not). Per account, at
//! most 100 failures an hour (ASVS 4.0.3 V2.2.1) from addresses that never logged in to it:
//! an address that did (the clinician's own workstation) is never shut out by what others
//! do. Unknown and known accounts are counted alike, so the answers do not tell them apart.
//! Kept in memory: a restart forgets the counts, never the accounts.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;

const HOUR_MS: i64 = 3_600_000;
const PER_HOUR: usize = 100;
const FREE_FAILURES: u32 = 3;
const MAX_WAIT_MS: i64 = 60_000;

#[derive(Default)]
struct State {
    /// (account, address) → consecutive failures and when the next attempt may come.
    pairs: HashMap<(String, IpAddr), (u32, i64)>,
    by_address: HashMap<IpAddr, VecDeque<i64>>,
    by_account: HashMap<String, VecDeque<i64>>,
    /// Addresses that logged in to an account before.
    known: HashSet<(String, IpAddr)>,
}

#[derive(Default)]
pub(crate) struct Throttle(Mutex<State>);

fn recent(q: &mut VecDeque<i64>, now: i64) -> usize {
    while q.front().is_some_and(|&t| t <= now - HOUR_MS) {
        q.pop_front();
    }
    q.len()
}

impl Throttle {
    /// `Err(wait_ms)` when this attempt must not be checked now.
    pub(crate) fn admit(&self, account: &str, addr: IpAddr, now: i64) -> Result<(), i64> {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let key = (account.to_owned(), addr);
        if let Some(&(_, until)) = s.pairs.get(&key)
            && until > now
        {
            return Err(until - now);
        }
        if let Some(q) = s.by_address.get_mut(&addr)
            && recent(q, now) >= PER_HOUR
        {
            return Err(q.front().map_or(HOUR_MS, |t| t + HOUR_MS - now));
        }
        let known = s.known.contains(&key);
        if !known
            && let Some(q) = s.by_account.get_mut(account)
            && recent(q, now) >= PER_HOUR
        {
            return Err(q.front().map_or(HOUR_MS, |t| t + HOUR_MS - now));
        }
        Ok(())
    }

    pub(crate) fn failed(&self, account: &str, addr: IpAddr, now: i64) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let e = s.pairs.entry((account.to_owned(), addr)).or_insert((0, 0));
        e.0 += 1;
        if e.0 >= FREE_FAILURES {
            let wait = (1000i64 << (e.0 - FREE_FAILURES).min(16)).min(MAX_WAIT_MS);
            e.1 = now + wait;
        }
        s.by_address.entry(addr).or_default().push_back(now);
        s.by_account
            .entry(account.to_owned())
            .or_default()
            .push_back(now);
    }

    pub(crate) fn succeeded(&self, account: &str, addr: IpAddr) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let key = (account.to_owned(), addr);
        s.pairs.remove(&key);
        s.known.insert(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guesses_slow_down_and_the_owner_is_never_shut_out() {
        let t = Throttle::default();
        let (attacker, owner): (IpAddr, IpAddr) =
            ("10.0.0.66".parse().unwrap(), "10.0.0.7".parse().unwrap());
        t.succeeded("dr-a", owner);
        let mut now = 0;
        for _ in 0..3 {
            assert!(t.admit("dr-a", attacker, now).is_ok());
            t.failed("dr-a", attacker, now);
        }
        // The fourth try from the attacker waits a second, the next two, ...
        assert_eq!(t.admit("dr-a", attacker, now), Err(1000));
        now += 1000;
        t.failed("dr-a", attacker, now);
        assert_eq!(t.admit("dr-a", attacker, now), Err(2000));
        // ...while the owner's address is let in at once.
        assert!(t.admit("dr-a", owner, now).is_ok());
        // A hundred failures in the hour from many addresses stop strangers, not the owner.
        for i in 0..100 {
            let a: IpAddr = format!("10.1.{}.{}", i / 250, i % 250).parse().unwrap();
            t.failed("dr-a", a, now);
        }
        assert!(t.admit("dr-a", "10.9.9.9".parse().unwrap(), now).is_err());
        assert!(t.admit("dr-a", owner, now).is_ok());
        // An hour later the account's count has passed.
        assert!(
            t.admit("dr-a", "10.9.9.9".parse().unwrap(), now + HOUR_MS + 1)
                .is_ok()
        );
    }
}
