//! Correlation ids: which incoming ids are kept, and UUIDv7 generation from
//! time and randomness the host passes in. The incoming header arrives as raw
//! bytes; anything that is not a valid id (non-UTF-8 included) gets a fresh one.

/// Longest incoming id that is kept.
pub const MAX_ID_LEN: usize = 128;

/// A kept id is 1–128 bytes of `[A-Za-z0-9._:-]`.
pub fn is_valid_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The id for this request: the incoming one when valid, else a fresh UUIDv7.
pub fn choose_id(incoming: Option<&[u8]>, unix_ms: u64, random: [u8; 10]) -> String {
    match incoming
        .filter(|id| is_valid_id(id))
        .and_then(|id| std::str::from_utf8(id).ok())
    {
        Some(id) => id.to_owned(),
        None => uuid_v7(unix_ms, random),
    }
}

/// RFC 9562 UUIDv7: 48-bit Unix milliseconds, version 7, 74 random bits, variant 10.
pub fn uuid_v7(unix_ms: u64, random: [u8; 10]) -> String {
    let mut bytes = [0u8; 16];
    let ms = unix_ms.to_be_bytes();
    bytes[..6].copy_from_slice(&ms[2..8]);
    bytes[6..].copy_from_slice(&random);
    bytes[6] = 0x70 | (bytes[6] & 0x0f);
    bytes[8] = 0x80 | (bytes[8] & 0x3f);

    // Written into a fixed buffer and copied once: a `String::push` per
    // character is a large part of a request's cost in the VM.
    let mut text = [b'-'; 36];
    let mut at = 0;
    for (index, byte) in bytes.iter().enumerate() {
        if matches!(index, 4 | 6 | 8 | 10) {
            at += 1;
        }
        if let Some([high, low]) = text.get_mut(at..at + 2) {
            *high = hex_digit(byte >> 4);
            *low = hex_digit(byte & 0x0f);
        }
        at += 2;
    }
    std::str::from_utf8(&text)
        .map(str::to_owned)
        .unwrap_or_default()
}

fn hex_digit(nibble: u8) -> u8 {
    match nibble {
        0..=9 => b'0' + nibble,
        _ => b'a' + (nibble & 0x0f).saturating_sub(10),
    }
}
