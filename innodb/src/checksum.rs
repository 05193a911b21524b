//! The page checksum algorithms InnoDB has written over the years, each as the server computes it.

/// Bytes of the page header: `FIL_PAGE_SPACE_OR_CHKSUM` (checksum, or MariaDB full_crc32's key version) at 0.
pub const SPACE_OR_CHECKSUM: usize = 0;
/// `FIL_PAGE_OFFSET`: the page number.
pub const PAGE_NUMBER: usize = 4;
/// `FIL_PAGE_LSN`: the page's LSN (8 bytes).
pub const LSN: usize = 16;
/// `FIL_PAGE_TYPE` (2 bytes).
pub const PAGE_TYPE: usize = 24;
/// `FIL_PAGE_FILE_FLUSH_LSN` (8 bytes; MariaDB: key version of an encrypted page).
pub const FILE_FLUSH_LSN: usize = 26;
/// `FIL_PAGE_ARCH_LOG_NO_OR_SPACE_ID` (4 bytes).
pub const SPACE_ID: usize = 34;
/// `FIL_PAGE_DATA`: where the page body starts.
pub const DATA: usize = 38;
/// `FIL_PAGE_END_LSN_OLD_CHKSUM`: the trailer, 8 bytes (old checksum, low 32 bits of the LSN).
pub const TRAILER: usize = 8;

/// The value both checksum fields hold when checksums are off (`innodb_checksum_algorithm=none`).
pub const NO_CHECKSUM: u32 = 0xDEAD_BEEF;

/// CRC-32C (Castagnoli), as `ut_crc32`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// `buf_calc_page_crc32`: CRC-32C of the header after the checksum up to the flush LSN, XOR that of the body
/// before the trailer (MySQL 5.6+, MariaDB before full_crc32).
pub fn page_crc32(page: &[u8]) -> u32 {
    crc32c(&page[PAGE_NUMBER..FILE_FLUSH_LSN]) ^ crc32c(&page[DATA..page.len() - TRAILER])
}

/// `ut_fold_ulint_pair`, in 64-bit wrapping arithmetic as on the servers' 64-bit builds.
fn fold_pair(n1: u64, n2: u64) -> u64 {
    const MASK: u64 = 1_463_735_687;
    const MASK2: u64 = 1_653_893_711;
    ((((n1 ^ n2 ^ MASK2) << 8).wrapping_add(n1)) ^ MASK).wrapping_add(n2)
}

/// `ut_fold_binary`.
fn fold(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |f, &b| fold_pair(f, u64::from(b)))
}

/// `buf_calc_page_new_checksum`: the legacy `innodb` algorithm's checksum stored in the header.
pub fn page_innodb_new(page: &[u8]) -> u32 {
    (fold(&page[PAGE_NUMBER..FILE_FLUSH_LSN]).wrapping_add(fold(&page[DATA..page.len() - TRAILER]))) as u32
}

/// `buf_calc_page_old_checksum`: the legacy `innodb` algorithm's checksum stored in the trailer.
pub fn page_innodb_old(page: &[u8]) -> u32 {
    fold(&page[..FILE_FLUSH_LSN]) as u32
}

/// MariaDB `full_crc32`: CRC-32C of everything before the last 4 bytes of the (possibly compressed) page.
pub fn page_full_crc32(page: &[u8]) -> u32 {
    crc32c(&page[..page.len() - 4])
}

/// A ROW_FORMAT=COMPRESSED page's crc32 checksum (`page_zip_calc_checksum`, crc32): no trailer on such pages.
pub fn zip_page_crc32(page: &[u8]) -> u32 {
    crc32c(&page[PAGE_NUMBER..LSN]) ^ crc32c(&page[PAGE_TYPE..FILE_FLUSH_LSN]) ^ crc32c(&page[SPACE_ID..])
}

/// A ROW_FORMAT=COMPRESSED page's `innodb` checksum: zlib's adler32 over the same ranges, seeded with 0 (not
/// zlib's 1), as `page_zip_calc_checksum` calls it.
pub fn zip_page_innodb(page: &[u8]) -> u32 {
    let mut adler = adler2::Adler32::from_checksum(0);
    adler.write_slice(&page[PAGE_NUMBER..LSN]);
    adler.write_slice(&page[PAGE_TYPE..FILE_FLUSH_LSN]);
    adler.write_slice(&page[SPACE_ID..]);
    adler.checksum()
}

/// Big-endian u32 at `at`.
pub fn be32(page: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(page[at..at + 4].try_into().expect("4 bytes"))
}

/// Big-endian u16 at `at`.
pub fn be16(page: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(page[at..at + 2].try_into().expect("2 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_castagnoli() {
        // The standard check value of CRC-32C.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn fold_matches_the_servers_formula_on_a_known_input() {
        // ut_fold_binary of one zero byte = ut_fold_ulint_pair(0, 0).
        let expected = ((1_653_893_711u64 << 8) ^ 1_463_735_687) as u32;
        assert_eq!(fold(&[0]) as u32, expected);
        // Order matters: folding is not a sum.
        assert_ne!(fold(&[1, 2]), fold(&[2, 1]));
    }
}
