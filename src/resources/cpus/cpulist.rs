//! CPU lists as the kernel reads and writes them (`cpuset.cpus`, `/sys/.../online`,
//! `thread_siblings_list`, `nodeN/cpulist`): `0-3,6`, plus the group syntax `0-15:2/4`
//! (in 0..=15, the first 2 of every 4). Formatting gives the kernel's canonical form:
//! ascending, runs of two or more as `a-b`, no spaces, an empty set as the empty string.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeSet;
use std::fmt;
use thiserror::Error;

/// Highest CPU number accepted (the kernel's `NR_CPUS` is at most 8192).
pub const MAX_CPU: u32 = 8191;

/// A CPU list that is not one the kernel would accept; says which element is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid CPU list {list:?}: {why}")]
pub struct ListError {
    /// The whole list.
    pub list: String,
    /// What is wrong in it.
    pub why: String,
}

/// A set of CPU (or NUMA node) numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct CpuSet(BTreeSet<u32>);

fn number(list: &str, s: &str) -> Result<u32, ListError> {
    let err = |why: String| ListError {
        list: list.to_string(),
        why,
    };
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(format!("{s:?} is not a number")));
    }
    let n: u64 = s
        .parse()
        .map_err(|_| err(format!("{s} is out of range (most {MAX_CPU})")))?;
    if n > u64::from(MAX_CPU) {
        return Err(err(format!("{n} is out of range (most {MAX_CPU})")));
    }
    Ok(n as u32)
}

impl CpuSet {
    /// The empty set.
    pub fn new() -> Self {
        CpuSet::default()
    }

    /// Parses a kernel CPU list; surrounding whitespace (the kernel's trailing newline) is
    /// ignored, the empty string is the empty set.
    pub fn parse(text: &str) -> Result<Self, ListError> {
        let list = text.trim();
        let err = |why: String| ListError {
            list: list.to_string(),
            why,
        };
        let mut out = BTreeSet::new();
        if list.is_empty() {
            return Ok(CpuSet(out));
        }
        for elem in list.split(',') {
            if elem.is_empty() {
                return Err(err("empty element".into()));
            }
            let (range, group) = match elem.split_once(':') {
                Some((r, g)) => (r, Some(g)),
                None => (elem, None),
            };
            let (lo, hi) = match range.split_once('-') {
                Some((a, b)) => (number(list, a)?, number(list, b)?),
                None => {
                    let n = number(list, range)?;
                    (n, n)
                }
            };
            if hi < lo {
                return Err(err(format!("range {range} ends before it starts")));
            }
            let (used, size) = match group {
                None => (1, 1),
                Some(g) => {
                    let Some((u, s)) = g.split_once('/') else {
                        return Err(err(format!("group {g:?} is not used/size")));
                    };
                    let (u, s) = (number(list, u)?, number(list, s)?);
                    if s == 0 || u == 0 || u > s {
                        return Err(err(format!(
                            "group {g}: want 0 < used <= size, got {u}/{s}"
                        )));
                    }
                    (u, s)
                }
            };
            out.extend((lo..=hi).filter(|c| (c - lo) % size < used));
        }
        Ok(CpuSet(out))
    }

    /// Whether `cpu` is in the set.
    pub fn contains(&self, cpu: u32) -> bool {
        self.0.contains(&cpu)
    }

    /// Adds `cpu`.
    pub fn insert(&mut self, cpu: u32) {
        self.0.insert(cpu);
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many CPUs are in the set.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The CPUs in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }

    /// The lowest CPU.
    pub fn first(&self) -> Option<u32> {
        self.0.first().copied()
    }

    /// `self ∪ other`.
    pub fn union(&self, other: &CpuSet) -> CpuSet {
        CpuSet(self.0.union(&other.0).copied().collect())
    }

    /// `self ∖ other`.
    pub fn difference(&self, other: &CpuSet) -> CpuSet {
        CpuSet(self.0.difference(&other.0).copied().collect())
    }

    /// `self ∩ other`.
    pub fn intersection(&self, other: &CpuSet) -> CpuSet {
        CpuSet(self.0.intersection(&other.0).copied().collect())
    }

    /// Whether the sets share a CPU.
    pub fn overlaps(&self, other: &CpuSet) -> bool {
        !self.0.is_disjoint(&other.0)
    }

    /// Whether every CPU of `self` is in `other`.
    pub fn is_subset(&self, other: &CpuSet) -> bool {
        self.0.is_subset(&other.0)
    }
}

impl FromIterator<u32> for CpuSet {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> Self {
        CpuSet(iter.into_iter().collect())
    }
}

impl fmt::Display for CpuSet {
    /// The kernel's list form: `0-3,6`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut it = self.0.iter().copied().peekable();
        let mut first = true;
        while let Some(lo) = it.next() {
            let mut hi = lo;
            while it.peek() == Some(&(hi + 1)) {
                hi += 1;
                it.next();
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if hi == lo {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for CpuSet {
    type Err = ListError;
    fn from_str(s: &str) -> Result<Self, ListError> {
        CpuSet::parse(s)
    }
}

impl Serialize for CpuSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for CpuSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        CpuSet::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(cpus: &[u32]) -> CpuSet {
        cpus.iter().copied().collect()
    }

    #[test]
    fn parses_kernel_lists() -> Result<(), ListError> {
        assert_eq!(CpuSet::parse("0-3,6")?, set(&[0, 1, 2, 3, 6]));
        assert_eq!(CpuSet::parse("5\n")?, set(&[5]));
        assert_eq!(CpuSet::parse(" 0,8 ")?, set(&[0, 8]));
        assert_eq!(CpuSet::parse("")?, CpuSet::new());
        assert_eq!(CpuSet::parse("\n")?, CpuSet::new());
        assert_eq!(CpuSet::parse("2-2")?, set(&[2]));
        assert_eq!(CpuSet::parse("3,1,1-2")?, set(&[1, 2, 3]));
        // Group syntax: the first 2 of every 4 in 0..=11.
        assert_eq!(CpuSet::parse("0-11:2/4")?, set(&[0, 1, 4, 5, 8, 9]));
        assert_eq!(CpuSet::parse("1-7:1/2")?, set(&[1, 3, 5, 7]));
        assert_eq!(CpuSet::parse("8191")?, set(&[8191]));
        Ok(())
    }

    #[test]
    fn refuses_what_the_kernel_refuses_and_says_why() {
        for (bad, why) in [
            ("1-", "\"\" is not a number"),
            ("-1", "\"\" is not a number"),
            ("a", "\"a\" is not a number"),
            ("1-a", "\"a\" is not a number"),
            ("1,,2", "empty element"),
            ("1,", "empty element"),
            ("3-1", "range 3-1 ends before it starts"),
            ("+1", "\"+1\" is not a number"),
            ("1 2", "\"1 2\" is not a number"),
            ("8192", "8192 is out of range (most 8191)"),
            ("0-99999999999999999999", "out of range"),
            ("0-7:3/2", "want 0 < used <= size, got 3/2"),
            ("0-7:1/0", "got 1/0"),
            ("0-7:2", "is not used/size"),
            ("N", "\"N\" is not a number"),
        ] {
            let e = CpuSet::parse(bad).expect_err(bad);
            assert!(e.to_string().contains(why), "{bad}: {e}");
            assert!(e.to_string().starts_with("invalid CPU list"), "{e}");
        }
    }

    #[test]
    fn formats_as_the_kernel_does() -> Result<(), ListError> {
        assert_eq!(set(&[0, 1, 2, 3, 6]).to_string(), "0-3,6");
        assert_eq!(set(&[0, 2, 4]).to_string(), "0,2,4");
        assert_eq!(set(&[7]).to_string(), "7");
        assert_eq!(set(&[1, 2]).to_string(), "1-2");
        assert_eq!(CpuSet::new().to_string(), "");
        for text in ["0-3,8-11", "4-7,12-15", "1", "0,2-5,9"] {
            assert_eq!(CpuSet::parse(text)?.to_string(), text);
        }
        Ok(())
    }

    #[test]
    fn set_operations_and_serde_as_a_list() -> Result<(), Box<dyn std::error::Error>> {
        let a = CpuSet::parse("0-3")?;
        let b = CpuSet::parse("2-5")?;
        assert_eq!(a.union(&b).to_string(), "0-5");
        assert_eq!(a.difference(&b).to_string(), "0-1");
        assert_eq!(a.intersection(&b).to_string(), "2-3");
        assert!(a.overlaps(&b));
        assert!(!a.overlaps(&CpuSet::parse("4")?));
        assert!(CpuSet::parse("1-2")?.is_subset(&a));
        assert_eq!(serde_json::to_string(&b)?, "\"2-5\"");
        assert_eq!(serde_json::from_str::<CpuSet>("\"0,8\"")?, set(&[0, 8]));
        assert!(serde_json::from_str::<CpuSet>("\"x\"").is_err());
        Ok(())
    }
}
