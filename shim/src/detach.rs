//! Detach key sequence matching on tty input (default ctrl-p ctrl-q, as Docker).

/// Docker's default detach sequence: ctrl-p ctrl-q.
pub const DEFAULT_DETACH_KEYS: [u8; 2] = [0x10, 0x11];

/// Finds the detach sequence in a stream of input chunks. Bytes that might start the
/// sequence are held back until it is clear whether they do.
#[derive(Debug, Clone)]
pub struct DetachMatcher {
    keys: Vec<u8>,
    held: Vec<u8>,
}

/// What one chunk of input amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fed {
    /// Bytes to forward to the process.
    pub forward: Vec<u8>,
    /// The full sequence was seen: the client detaches (later bytes are dropped).
    pub detach: bool,
}

impl DetachMatcher {
    /// A matcher for `keys`; empty means the default sequence.
    pub fn new(keys: &[u8]) -> Self {
        let keys = if keys.is_empty() {
            DEFAULT_DETACH_KEYS.to_vec()
        } else {
            keys.to_vec()
        };
        Self {
            keys,
            held: Vec::new(),
        }
    }

    /// Feeds one chunk of client input.
    pub fn feed(&mut self, input: &[u8]) -> Fed {
        let mut forward = Vec::with_capacity(input.len());
        for &b in input {
            self.held.push(b);
            while !self.held.is_empty() && !self.keys.starts_with(&self.held) {
                forward.push(self.held.remove(0));
            }
            if self.held.len() == self.keys.len() {
                self.held.clear();
                return Fed {
                    forward,
                    detach: true,
                };
            }
        }
        Fed {
            forward,
            detach: false,
        }
    }

    /// Bytes held back at end of input (a sequence prefix that never completed).
    pub fn take_held(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_sequence_detaches_and_forwards_what_came_before() {
        let mut m = DetachMatcher::new(&[]);
        let f = m.feed(b"ls\n\x10\x11more");
        assert_eq!(f.forward, b"ls\n");
        assert!(f.detach);
    }

    #[test]
    fn sequence_split_across_chunks() {
        let mut m = DetachMatcher::new(&[]);
        let f = m.feed(b"a\x10");
        assert_eq!(f.forward, b"a");
        assert!(!f.detach);
        let f = m.feed(b"\x11");
        assert!(f.detach);
        assert!(f.forward.is_empty());
    }

    #[test]
    fn broken_prefix_is_forwarded_in_order() {
        let mut m = DetachMatcher::new(&[]);
        let f = m.feed(b"\x10x\x10\x10\x11");
        assert_eq!(f.forward, b"\x10x\x10");
        assert!(f.detach);
        let mut m = DetachMatcher::new(&[]);
        let f = m.feed(b"\x10");
        assert!(f.forward.is_empty());
        assert_eq!(m.take_held(), b"\x10");
    }

    #[test]
    fn custom_keys_with_repeated_prefix() {
        // ctrl-a ctrl-a ctrl-b: "aab" inside "aaab" must still match.
        let mut m = DetachMatcher::new(&[1, 1, 2]);
        let f = m.feed(&[1, 1, 1, 2]);
        assert_eq!(f.forward, vec![1]);
        assert!(f.detach);
        let mut m = DetachMatcher::new(b"x");
        assert!(m.feed(b"x").detach);
    }
}
