//! Joining tar streams: the archives of a commit and of its submodules
//! become one build context without touching the disk.
//!
//! A tar stream is a sequence of 512-byte blocks: each entry is a header
//! block followed by its data, padded to whole blocks, and the archive ends
//! with (at least) two zero blocks. To append one archive to another, the
//! first one's end marker (and any padding after it) must go: readers such as
//! Docker's stop at the first zero block.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A tar block.
pub(crate) const BLOCK: usize = 512;

/// The size of an entry's data, from its header's size field (octal, or
/// base-256 when the first byte's high bit is set, as GNU tar writes sizes
/// of 8 GiB and more). `None` if the field is not a number.
fn entry_size(header: &[u8; BLOCK]) -> Option<u64> {
    let field = &header[124..136];
    if field[0] & 0x80 != 0 {
        // Base-256, big-endian, the marker bit cleared.
        let mut n: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            n = n.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(n);
    }
    let text = std::str::from_utf8(field).ok()?;
    let digits = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if digits.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(digits, 8).ok()
}

/// Copies the entries of the tar stream `from` to `to`, without its end
/// marker; reads `from` to its end (so that the process writing it can
/// finish). Returns the bytes written.
pub(crate) async fn copy_entries<R, W>(from: &mut R, to: &mut W) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut header = [0u8; BLOCK];
    let mut buf = vec![0u8; 64 * BLOCK];
    let mut written = 0;
    loop {
        match from.read_exact(&mut header).await {
            Ok(_) => {}
            // An archive may end without its marker (tar accepts that).
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(written),
            Err(e) => return Err(e),
        }
        if header.iter().all(|&b| b == 0) {
            // The end marker: skip it and whatever padding follows.
            tokio::io::copy(from, &mut tokio::io::sink()).await?;
            return Ok(written);
        }
        let size = entry_size(&header).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "a tar header with a malformed size")
        })?;
        to.write_all(&header).await?;
        let mut left = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        written += BLOCK as u64 + left;
        while left > 0 {
            let n = (left.min(buf.len() as u64)) as usize;
            from.read_exact(&mut buf[..n]).await?;
            to.write_all(&buf[..n]).await?;
            left -= n as u64;
        }
    }
}

/// The end of an archive: two zero blocks.
pub(crate) const END: [u8; 2 * BLOCK] = [0; 2 * BLOCK];

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, size: u64) -> [u8; BLOCK] {
        let mut h = [0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let field = format!("{size:011o}\0");
        h[124..136].copy_from_slice(field.as_bytes());
        h
    }

    #[test]
    fn sizes_are_read_in_octal_and_base_256() {
        assert_eq!(entry_size(&header("a", 0)), Some(0));
        assert_eq!(entry_size(&header("a", 1000)), Some(1000));
        let mut big = [0u8; BLOCK];
        big[124] = 0x80;
        big[131..136].copy_from_slice(&[0x02, 0x00, 0x00, 0x00, 0x01]); // 8 GiB + 1
        assert_eq!(entry_size(&big), Some((2u64 << 32) + 1));
        let mut bad = header("a", 0);
        bad[124..127].copy_from_slice(b"xyz");
        assert_eq!(entry_size(&bad), None);
    }

    #[tokio::test]
    async fn entries_are_copied_and_the_end_marker_dropped() {
        let mut archive = Vec::new();
        archive.extend_from_slice(&header("one", 600));
        archive.extend(std::iter::repeat_n(7u8, 1024)); // 600 bytes, padded
        archive.extend_from_slice(&header("two", 0));
        archive.extend_from_slice(&[0u8; 10 * BLOCK]); // end marker and padding
        let mut out = Vec::new();
        let n = copy_entries(&mut archive.as_slice(), &mut out).await.unwrap();
        assert_eq!(n, 4 * BLOCK as u64);
        assert_eq!(out, archive[..4 * BLOCK]);
        // A truncated entry is an error, not a short archive.
        let mut cut = &archive[..BLOCK + 100];
        assert!(copy_entries(&mut cut, &mut Vec::new()).await.is_err());
    }
}
