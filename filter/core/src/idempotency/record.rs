//! The bytes in shared data: bucket entries and stored responses, encoded and
//! decoded with bounds checks (anything malformed reads as empty, never a panic).

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EntryState {
    Free = 0,
    InFlight = 1,
    Completed = 2,
    NotReplayable = 3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) owner: [u8; 16],
    pub(super) fingerprint: [u8; 16],
    pub(super) expires_at_ns: u64,
    pub(super) state: EntryState,
    pub(super) generation: u32,
    pub(super) status: u16,
    /// Which tenant holds it (the first bytes of its share hash), for the per-bucket cap.
    pub(super) tenant: u32,
}

impl Entry {
    pub(super) const FREE: Entry = Entry {
        owner: [0; 16],
        fingerprint: [0; 16],
        expires_at_ns: 0,
        state: EntryState::Free,
        generation: 0,
        status: 0,
        tenant: 0,
    };

    pub(super) fn is_live(&self, now_ns: u64) -> bool {
        self.state != EntryState::Free && self.expires_at_ns > now_ns
    }
}

pub(super) fn encode_bucket(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + entries.len() * ENTRY_LEN);
    out.push(BUCKET_MAGIC);
    out.push(u8::try_from(entries.len()).unwrap_or(0));
    for entry in entries {
        out.extend_from_slice(&entry.owner);
        out.extend_from_slice(&entry.fingerprint);
        out.extend_from_slice(&entry.expires_at_ns.to_le_bytes());
        out.push(entry.state as u8);
        out.extend_from_slice(&entry.generation.to_le_bytes());
        out.extend_from_slice(&entry.status.to_le_bytes());
        out.extend_from_slice(&entry.tenant.to_le_bytes());
    }
    out
}

/// Decodes a bucket; anything malformed reads as an empty bucket.
pub(super) fn decode_bucket(bytes: &[u8]) -> Vec<Entry> {
    decode_bucket_strict(bytes).unwrap_or_default()
}

pub(super) fn decode_bucket_strict(bytes: &[u8]) -> Option<Vec<Entry>> {
    let mut reader = Reader::new(bytes);
    if reader.u8()? != BUCKET_MAGIC {
        return None;
    }
    let count = usize::from(reader.u8()?);
    if count > SLOTS_PER_BUCKET {
        return None;
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let owner = reader.array16()?;
        let fingerprint = reader.array16()?;
        let expires_at_ns = reader.u64()?;
        let state = match reader.u8()? {
            0 => EntryState::Free,
            1 => EntryState::InFlight,
            2 => EntryState::Completed,
            3 => EntryState::NotReplayable,
            _ => return None,
        };
        entries.push(Entry {
            owner,
            fingerprint,
            expires_at_ns,
            state,
            generation: reader.u32()?,
            status: reader.u16()?,
            tenant: reader.u32()?,
        });
    }
    reader.is_done().then_some(entries)
}

/// A response as stored for replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

pub(super) fn encode_response(generation: u32, response: &StoredResponse) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + response.body.len());
    out.push(RESPONSE_MAGIC);
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&response.status.to_le_bytes());
    out.extend_from_slice(
        &u16::try_from(response.headers.len())
            .unwrap_or(0)
            .to_le_bytes(),
    );
    for (name, value) in &response.headers {
        for part in [name, value] {
            out.extend_from_slice(&u16::try_from(part.len()).unwrap_or(0).to_le_bytes());
            out.extend_from_slice(part.as_bytes());
        }
    }
    out.extend_from_slice(&response.body);
    out
}

pub(super) fn decode_response(bytes: &[u8]) -> Option<(u32, StoredResponse)> {
    let mut reader = Reader::new(bytes);
    if reader.u8()? != RESPONSE_MAGIC {
        return None;
    }
    let generation = reader.u32()?;
    let status = reader.u16()?;
    let count = reader.u16()?;
    let mut headers = Vec::with_capacity(usize::from(count).min(64));
    for _ in 0..count {
        let name = reader.string()?;
        let value = reader.string()?;
        headers.push((name, value));
    }
    let body = reader.rest().to_vec();
    Some((
        generation,
        StoredResponse {
            status,
            headers,
            body,
        },
    ))
}

/// A bounds-checked little-endian reader: running out of bytes is `None`, never a panic.
pub(super) struct Reader<'a> {
    pub(super) bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }
    pub(super) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Some(head)
    }
    pub(super) fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }
    pub(super) fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    pub(super) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    pub(super) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    pub(super) fn array16(&mut self) -> Option<[u8; 16]> {
        self.take(16)?.try_into().ok()
    }
    pub(super) fn string(&mut self) -> Option<String> {
        let len = usize::from(self.u16()?);
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
    pub(super) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }
    pub(super) fn is_done(&self) -> bool {
        self.bytes.is_empty()
    }
}
