//! A header map as proxy-wasm hosts serialize it in one call
//! (`proxy_get_header_map_pairs`): a little-endian `u32` count, a `u32` name
//! length and value length per entry, then each name and value followed by a
//! NUL. The bytes are the host's: the whole layout is checked before any
//! entry is used, and names and values stay bytes (names compare
//! ASCII-case-insensitively, as both hosts' single-header reads do).
//!
//! Why the glue reads a request's headers this way when a config looks at
//! several of them: each single read is a host call with an allocation
//! callback into the VM, and from [`WHOLE_MAP_FROM_READS`] reads on the one
//! call for the whole map costs less than those reads.

/// The number of request headers a config reads from which one whole-map
/// read is cheaper than one read per header. Measured with instr-bench on
/// Envoy 1.40 / V8 (instructions per request, one run each, a GET of 8
/// headers): 2 reads (the default configuration) 267 608 one by one, 271 441
/// as the whole map; 4 reads (6 limits, a user and an API key among them)
/// 359 343 and 342 341; 9 reads (idempotency and If-Match configured)
/// 313 380 and 271 097.
pub const WHOLE_MAP_FROM_READS: usize = 3;

const LEN: usize = 4;

/// A checked serialized map, borrowed from the host's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderMap<'a> {
    bytes: &'a [u8],
    count: usize,
}

impl<'a> HeaderMap<'a> {
    /// The map in `bytes`, or `None` when they are not a whole serialized map
    /// (a length past the end, a missing NUL, bytes left over). No bytes at
    /// all is the empty map (a host answers an empty map with no buffer).
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        if bytes.is_empty() {
            return Some(Self { bytes, count: 0 });
        }
        let count = usize::try_from(read_u32(bytes, 0)?).ok()?;
        let map = Self { bytes, count };
        let mut entries = map.entries()?;
        for _ in 0..count {
            let start = entries.data;
            let (name, value) = entries.next()?;
            // Each name and value is followed by its NUL.
            let name_nul = start.checked_add(name.len())?;
            let value_nul = name_nul.checked_add(1)?.checked_add(value.len())?;
            if bytes.get(name_nul) != Some(&0) || bytes.get(value_nul) != Some(&0) {
                return None;
            }
        }
        (entries.data == bytes.len()).then_some(map)
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The entries, in the host's order: `(name, value)`.
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        self.entries().into_iter().flatten()
    }

    /// The value of the first entry named `name` (what a single-header read
    /// answers).
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, value)| value)
    }

    /// How many entries are named `name`.
    pub fn count(&self, name: &str) -> usize {
        self.iter()
            .filter(|(key, _)| key.eq_ignore_ascii_case(name.as_bytes()))
            .count()
    }

    /// A walk over the entries (`None` when the lengths cannot fit).
    fn entries(&self) -> Option<Entries<'a>> {
        Some(Entries {
            bytes: self.bytes,
            sizes: LEN,
            data: self.count.checked_mul(2 * LEN)?.checked_add(LEN)?,
            left: self.count,
        })
    }
}

/// The entries of a map, in order: the next pair of lengths at `sizes`, the
/// next name at `data`; it ends early where a length points past the bytes.
struct Entries<'a> {
    bytes: &'a [u8],
    sizes: usize,
    data: usize,
    left: usize,
}

impl<'a> Iterator for Entries<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        self.left = self.left.checked_sub(1)?;
        let name_len = usize::try_from(read_u32(self.bytes, self.sizes)?).ok()?;
        let value_len = usize::try_from(read_u32(self.bytes, self.sizes + LEN)?).ok()?;
        self.sizes += 2 * LEN;
        let name_end = self.data.checked_add(name_len)?;
        let name = self.bytes.get(self.data..name_end)?;
        let value_start = name_end.checked_add(1)?;
        let value_end = value_start.checked_add(value_len)?;
        let value = self.bytes.get(value_start..value_end)?;
        self.data = value_end.checked_add(1)?;
        Some((name, value))
    }
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let word: [u8; LEN] = bytes.get(at..at.checked_add(LEN)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(word))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// The serialization hosts use, for building test maps.
    fn serialize(entries: &[(&[u8], &[u8])]) -> Vec<u8> {
        let count = u32::try_from(entries.len()).unwrap_or(u32::MAX);
        let mut bytes = count.to_le_bytes().to_vec();
        for (name, value) in entries {
            for part in [name, value] {
                let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
                bytes.extend_from_slice(&len.to_le_bytes());
            }
        }
        for (name, value) in entries {
            for part in [name, value] {
                bytes.extend_from_slice(part);
                bytes.push(0);
            }
        }
        bytes
    }

    #[test]
    fn lookups_answer_what_single_reads_answer() {
        let bytes = serialize(&[
            (b":method", b"POST"),
            (b"X-Tenant-Id", b"acme"),
            (b"idempotency-key", b"\"a\""),
            (b"x-bin", b"\xff\x00\xfe"),
            (b"idempotency-key", b"\"b\""),
            (b"empty", b""),
        ]);
        let map = HeaderMap::parse(&bytes);
        assert!(map.is_some(), "a host's map parses");
        let map = map.unwrap_or(HeaderMap {
            bytes: &[],
            count: 0,
        });
        assert_eq!(map.len(), 6);
        let cases: [(&str, Option<&[u8]>, usize); 6] = [
            (":method", Some(b"POST"), 1),
            ("x-tenant-id", Some(b"acme"), 1),
            ("idempotency-key", Some(b"\"a\""), 2),
            ("x-bin", Some(b"\xff\x00\xfe"), 1),
            ("empty", Some(b""), 1),
            ("absent", None, 0),
        ];
        for (name, value, count) in cases {
            assert_eq!(map.get(name), value, "{name}");
            assert_eq!(map.count(name), count, "{name}");
        }
    }

    #[test]
    fn no_buffer_is_the_empty_map() {
        let map = HeaderMap::parse(&[]);
        assert_eq!(map.map(|map| map.is_empty()), Some(true));
        assert_eq!(map.and_then(|map| map.get("x")), None);
    }

    #[test]
    fn bytes_that_are_not_a_whole_map_are_refused() {
        let good = serialize(&[(b"a", b"1"), (b"bb", b"22")]);
        let mut without_nul = good.clone();
        if let Some(last) = without_nul.last_mut() {
            *last = b'x';
        }
        let mut left_over = good.clone();
        left_over.push(0);
        let mut long_name = good.clone();
        long_name.splice(4..8, 1000u32.to_le_bytes());
        let mut wrapping = good.clone();
        wrapping.splice(4..8, u32::MAX.to_le_bytes());
        let cases: [(&str, Vec<u8>); 8] = [
            ("truncated count", vec![1, 0]),
            ("count without lengths", 1u32.to_le_bytes().to_vec()),
            ("huge count", u32::MAX.to_le_bytes().to_vec()),
            (
                "cut short",
                good.get(..good.len() - 2).unwrap_or_default().to_vec(),
            ),
            ("a value without its NUL", without_nul),
            ("bytes left over", left_over),
            ("a name past the end", long_name),
            ("a length near u32::MAX", wrapping),
        ];
        for (what, bytes) in cases {
            assert_eq!(HeaderMap::parse(&bytes), None, "{what}");
        }
        assert!(HeaderMap::parse(&good).is_some());
    }
}
