//! The elastic-memory policy as a pure function: from one sample of the pool and its
//! containers to the actions to take ("reservation-protected burst",
//! research/net-mem.md §5.2).
//!
//! * **Green** (headroom at or above the low threshold): an elastic container's limit is
//!   its ceiling, so it grows without waiting for the controller; one squeezed earlier gets
//!   its limit back toward the ceiling, out of the headroom above the low threshold.
//! * **Yellow** (headroom under the low threshold): nothing is granted; bursting containers
//!   (limit above their entitlement) are squeezed toward `max(entitlement, usage)`.
//! * **Red** (headroom at or under the critical threshold, or the pool is out of memory):
//!   the container furthest over its entitlement is killed (ties: the youngest). A
//!   container within its entitlement is never the victim. No second victim while one is
//!   dying.

const MIB: u64 = 1 << 20;
/// Smallest grant or squeeze worth a write.
const STEP_MIN: u64 = MIB;
/// Room left above usage when squeezing (so that a squeezed container is not paused at
/// once by its own limit).
const SQUEEZE_SLACK: u64 = 4 * MIB;

/// One sample of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    /// Its memory.
    pub size: u64,
    /// Headroom under which bursting containers are squeezed.
    pub low: u64,
    /// Headroom at or under which the furthest-over container is killed.
    pub critical: u64,
    /// Working set of the whole pool (usage minus inactive file pages).
    pub usage: u64,
    /// The pool hit its own limit and its tasks wait (v1 `under_oom`).
    pub under_oom: bool,
}

impl Pool {
    /// Memory left in the pool.
    pub fn headroom(&self) -> u64 {
        self.size.saturating_sub(self.usage)
    }
}

/// One sample of a running container in the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Container id.
    pub id: String,
    /// What it is entitled to (`-m`; 0 without a limit: nothing is guaranteed).
    pub entitlement: u64,
    /// Its elastic ceiling (`None`: not elastic, its limit never moves).
    pub ceiling: Option<u64>,
    /// Its current limit in the kernel.
    pub limit: u64,
    /// Its working set.
    pub usage: u64,
    /// Start time, ns since the epoch (ties between victims go to the youngest).
    pub started_ns: i64,
    /// Killed already, not gone yet.
    pub dying: bool,
}

impl Member {
    /// How far over its entitlement it is.
    pub fn over(&self) -> u64 {
        self.usage.saturating_sub(self.entitlement)
    }
}

/// What the controller does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Raise an elastic container's limit.
    Grow {
        /// Container id.
        id: String,
        /// The new limit.
        to: u64,
        /// Why, for the event.
        reason: String,
    },
    /// Lower a bursting container's limit toward its entitlement.
    Squeeze {
        /// Container id.
        id: String,
        /// The limit asked for (the kernel may refuse to go under usage).
        to: u64,
        /// Why.
        reason: String,
    },
    /// Kill a container.
    Kill {
        /// Container id.
        id: String,
        /// Why.
        reason: String,
    },
}

fn mib(b: u64) -> u64 {
    b / MIB
}

/// The actions for one sample.
pub fn decide(pool: &Pool, members: &[Member]) -> Vec<Action> {
    let headroom = pool.headroom();
    if headroom <= pool.critical || pool.under_oom {
        if members.iter().any(|m| m.dying) {
            return Vec::new();
        }
        let victim = members.iter().filter(|m| m.over() > 0).max_by(|a, b| {
            a.over()
                .cmp(&b.over())
                .then(a.started_ns.cmp(&b.started_ns))
        });
        return victim
            .map(|v| {
                let why = if pool.under_oom {
                    "the pool is out of memory".to_string()
                } else {
                    format!(
                        "pool headroom {} MiB is at or under the critical {} MiB",
                        mib(headroom),
                        mib(pool.critical)
                    )
                };
                vec![Action::Kill {
                    id: v.id.clone(),
                    reason: format!(
                        "{why}; furthest over its entitlement: uses {} MiB, entitled to {} MiB",
                        mib(v.usage),
                        mib(v.entitlement)
                    ),
                }]
            })
            .unwrap_or_default();
    }
    if headroom < pool.low {
        return members
            .iter()
            .filter(|m| !m.dying && m.ceiling.is_some() && m.limit > m.entitlement)
            .filter_map(|m| {
                let to = m.entitlement.max(m.usage.saturating_add(SQUEEZE_SLACK));
                (to + STEP_MIN <= m.limit).then(|| Action::Squeeze {
                    id: m.id.clone(),
                    to,
                    reason: format!(
                        "pool headroom {} MiB is under the low {} MiB; limit {} MiB back toward the entitlement {} MiB",
                        mib(headroom),
                        mib(pool.low),
                        mib(m.limit),
                        mib(m.entitlement)
                    ),
                })
            })
            .collect();
    }
    // Green: squeezed containers get their room back, toward their ceilings.
    let mut room = headroom - pool.low;
    let mut out = Vec::new();
    // A container being killed gets nothing back.
    for m in members.iter().filter(|m| !m.dying) {
        let Some(ceiling) = m.ceiling else { continue };
        let grant = ceiling.saturating_sub(m.limit).min(room);
        if grant < STEP_MIN {
            continue;
        }
        room -= grant;
        out.push(Action::Grow {
            id: m.id.clone(),
            to: m.limit + grant,
            reason: format!(
                "pool headroom {} MiB is above the low {} MiB again; limit {} MiB back toward the ceiling {} MiB",
                mib(headroom),
                mib(pool.low),
                mib(m.limit),
                mib(ceiling)
            ),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(usage_mib: u64) -> Pool {
        Pool {
            size: 600 * MIB,
            low: 60 * MIB,
            critical: 24 * MIB,
            usage: usage_mib * MIB,
            under_oom: false,
        }
    }

    fn member(id: &str, ent: u64, ceil: Option<u64>, limit: u64, usage: u64) -> Member {
        Member {
            id: id.into(),
            entitlement: ent * MIB,
            ceiling: ceil.map(|c| c * MIB),
            limit: limit * MIB,
            usage: usage * MIB,
            started_ns: 0,
            dying: false,
        }
    }

    fn ids(actions: &[Action]) -> Vec<(&str, &str, u64)> {
        actions
            .iter()
            .map(|a| match a {
                Action::Grow { id, to, .. } => ("grow", id.as_str(), to / MIB),
                Action::Squeeze { id, to, .. } => ("squeeze", id.as_str(), to / MIB),
                Action::Kill { id, .. } => ("kill", id.as_str(), 0),
            })
            .collect()
    }

    #[test]
    fn green_gives_squeezed_containers_their_room_back_toward_the_ceiling() {
        let ms = [
            member("a", 300, None, 300, 290),      // not elastic: never moves
            member("b", 50, Some(400), 204, 200),  // squeezed earlier
            member("d", 100, Some(120), 120, 119), // at its ceiling
        ];
        assert_eq!(ids(&decide(&pool(200), &ms)), vec![("grow", "b", 400)]);
        let a = decide(&pool(200), &ms);
        let Action::Grow { reason, .. } = &a[0] else {
            unreachable!()
        };
        assert!(
            reason.contains("back toward the ceiling 400 MiB"),
            "{reason}"
        );
        // killed, not gone yet: nothing back, nothing squeezed
        let mut b = ms[1].clone();
        b.dying = true;
        assert!(decide(&pool(200), std::slice::from_ref(&b)).is_empty());
        assert!(decide(&pool(560), &[b]).is_empty());
    }

    #[test]
    fn grants_never_exceed_the_room_above_the_low_threshold_or_the_ceiling() {
        let ms = [
            member("b", 50, Some(400), 300, 295),
            member("c", 50, Some(400), 300, 295),
        ];
        // headroom 100, low 60: 40 MiB to share, first come first served
        assert_eq!(ids(&decide(&pool(500), &ms)), vec![("grow", "b", 340)]);
        let ms = [member("b", 50, Some(310), 300, 295)];
        assert_eq!(ids(&decide(&pool(100), &ms)), vec![("grow", "b", 310)]);
    }

    #[test]
    fn yellow_squeezes_bursting_containers_toward_max_of_entitlement_and_usage() {
        let ms = [
            member("a", 300, None, 300, 280),
            member("b", 50, Some(400), 250, 200),
            member("c", 200, Some(400), 200, 100), // not bursting
            member("d", 50, Some(400), 120, 30),
        ];
        assert_eq!(
            ids(&decide(&pool(560), &ms)),
            vec![("squeeze", "b", 204), ("squeeze", "d", 50)]
        );
    }

    #[test]
    fn red_kills_the_one_furthest_over_its_entitlement_never_one_within() {
        let ms = [
            member("a", 300, None, 300, 280),     // biggest, within
            member("b", 50, Some(400), 210, 200), // 150 over
            member("c", 200, None, 200, 100),     // within
            member("e", 0, None, 0, 90),          // no limit: 90 over
        ];
        let a = decide(&pool(580), &ms);
        assert_eq!(ids(&a), vec![("kill", "b", 0)]);
        let Action::Kill { reason, .. } = &a[0] else {
            unreachable!()
        };
        assert!(
            reason.contains("critical 24 MiB") && reason.contains("entitled to 50 MiB"),
            "{reason}"
        );
        // nobody over: no victim
        assert!(decide(&pool(590), &[ms[0].clone(), ms[2].clone()]).is_empty());
        // one already dying: wait
        let mut b = ms[1].clone();
        b.dying = true;
        assert!(decide(&pool(590), &[b, ms[3].clone()]).is_empty());
    }

    #[test]
    fn red_on_pool_oom_and_ties_go_to_the_youngest() {
        let mut p = pool(100);
        p.under_oom = true;
        let mut old = member("old", 50, Some(400), 150, 150);
        old.started_ns = 1;
        let mut young = member("young", 50, Some(400), 150, 150);
        young.started_ns = 2;
        let a = decide(&p, &[old, young]);
        assert_eq!(ids(&a), vec![("kill", "young", 0)]);
        let Action::Kill { reason, .. } = &a[0] else {
            unreachable!()
        };
        assert!(reason.starts_with("the pool is out of memory"), "{reason}");
    }
}
