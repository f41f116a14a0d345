//! How bodies are stored (issue 13): zstd-compressed when that is smaller, which a push payload
//! always is (7.7 KB becomes about 2 KB). Fewer bytes per delivery is fewer pages for the
//! writer to put in the WAL and sync, and a journal a quarter of the size. The SHA-256 a body
//! is keyed by is the digest of the bytes as received, and reading a body gives those bytes
//! back exactly (signatures still verify).

use std::cell::RefCell;

use rusqlite::functions::FunctionFlags;
use rusqlite::Connection;

use super::StoreError;

/// Stored as received.
pub const IDENTITY: &str = "identity";
/// A zstd frame of the body as received.
pub const ZSTD: &str = "zstd";
/// zstd's default level. Level 1 took 2 µs less per push but left the benchmark's compact
/// 8.4 KB push at 1,994 bytes, just too large for two bodies to share a 4 KiB page; at level 3
/// it is 1,940 bytes and two do (a journal 40 % smaller, fewer pages to write and checkpoint).
/// Real pushes vary in size, so that threshold is the fixture's; a smaller body is never worse.
const LEVEL: i32 = 3;

thread_local! {
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
}

/// The bytes to store for `body`, and their encoding.
pub fn encode(body: &[u8]) -> (&'static str, Vec<u8>) {
    let compressed = COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = zstd::bulk::Compressor::new(LEVEL).ok();
        }
        cell.as_mut().and_then(|c| c.compress(body).ok())
    });
    match compressed {
        Some(c) if c.len() < body.len() => (ZSTD, c),
        _ => (IDENTITY, body.to_vec()),
    }
}

/// The body as received, from what was stored.
pub fn decode(encoding: &str, stored: &[u8]) -> Result<Vec<u8>, StoreError> {
    match encoding {
        IDENTITY => Ok(stored.to_vec()),
        ZSTD => zstd::stream::decode_all(stored)
            .map_err(|e| StoreError::Invalid(format!("a stored body does not decompress: {e}"))),
        other => Err(StoreError::Invalid(format!(
            "a stored body has an unknown encoding {other:?}"
        ))),
    }
}

/// Registers `slipway_body(encoding, body)` on `conn`: the body as received (NULL for NULL).
pub fn register(conn: &Connection) -> Result<(), StoreError> {
    conn.create_scalar_function(
        "slipway_body",
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let encoding: Option<String> = ctx.get(0)?;
            let Some(stored) = ctx.get_raw(1).as_bytes_or_null()? else {
                return Ok(None);
            };
            decode(encoding.as_deref().unwrap_or(IDENTITY), stored)
                .map(Some)
                .map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_is_stored_compressed_and_read_back_exactly() {
        let push = include_bytes!("../../../fixtures/github/push_master.json");
        let (encoding, stored) = encode(push);
        assert_eq!(encoding, ZSTD);
        assert!(stored.len() * 2 < push.len(), "{} bytes", stored.len());
        assert_eq!(decode(encoding, &stored).unwrap(), push);
    }

    #[test]
    fn a_body_that_does_not_shrink_is_stored_as_is() {
        let (encoding, stored) = encode(b"{}");
        assert_eq!((encoding, stored.as_slice()), (IDENTITY, &b"{}"[..]));
        assert_eq!(decode(IDENTITY, b"{}").unwrap(), b"{}");
        assert!(decode("brotli", b"x").is_err());
        assert!(decode(ZSTD, b"not zstd").is_err());
    }
}
