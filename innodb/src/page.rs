//! One page's verdict.

use crate::checksum::*;
use crate::tablespace::{Format, Tablespace, DOUBLEWRITE_PAGES};

/// Where a page is: its tablespace and its number (its offset / the physical page size).
#[derive(Debug, Clone, Copy)]
pub struct PageContext {
    /// The tablespace.
    pub space: Tablespace,
    /// The page number.
    pub page_number: u64,
}

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Intact, by this algorithm.
    Valid(Algorithm),
    /// Not checked: the system tablespace's doublewrite buffer (copies of other pages, in flux).
    Skipped,
    /// A kind of page this code cannot check (said why); taken as intact.
    Unverifiable(&'static str),
    /// Damaged or torn: why.
    Corrupt(String),
}

impl Verdict {
    /// Whether the copy may go on with this page.
    pub fn is_ok(&self) -> bool {
        !matches!(self, Verdict::Corrupt(_))
    }
}

/// The algorithm a page was found to be written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Never written: all zeros (allocated, not yet used).
    Zero,
    /// MySQL/MariaDB `crc32`.
    Crc32,
    /// The legacy `innodb` fold.
    Innodb,
    /// `none` (both fields 0xDEADBEEF).
    None,
    /// MariaDB `full_crc32`.
    FullCrc32,
}

/// MariaDB's classic-format page types whose body is compressed (`FIL_PAGE_PAGE_COMPRESSED`,
/// `FIL_PAGE_PAGE_COMPRESSED_ENCRYPTED`): their checksum covers a layout this code does not decode.
const CLASSIC_PAGE_COMPRESSED_TYPES: [u16; 2] = [34354, 37401];

/// The largest page, zeroed: comparing against it is a `memcmp`, many times faster than a byte loop (a new
/// tablespace is mostly all-zero pages, so this test is the hot path).
static ZEROS: [u8; 65536] = [0; 65536];

/// Whether every byte of `bytes` is zero.
fn is_zero(bytes: &[u8]) -> bool {
    bytes.chunks(ZEROS.len()).all(|piece| piece == &ZEROS[..piece.len()])
}

/// Checks one page (`page.len()` = the tablespace's physical page size) as the server would read it.
pub fn check_page(page: &[u8], context: PageContext) -> Verdict {
    if is_zero(page) {
        return Verdict::Valid(Algorithm::Zero);
    }
    if context.space.system && DOUBLEWRITE_PAGES.contains(&context.page_number) {
        return Verdict::Skipped;
    }
    // mariabackup checks the page number except in the system tablespace.
    let stored_number = be32(page, PAGE_NUMBER);
    if !context.space.system && u64::from(stored_number) != context.page_number {
        return Verdict::Corrupt(format!("its header says page {stored_number}"));
    }
    match context.space.format {
        Format::FullCrc32 => check_full_crc32(page, context.space.page_compressed),
        Format::Classic if context.space.zip => check_zip(page),
        Format::Classic => check_classic(page, context),
    }
}

fn check_full_crc32(page: &[u8], page_compressed_space: bool) -> Verdict {
    let page_type = be16(page, PAGE_TYPE);
    // FIL_PAGE_COMPRESS_FCRC32_MARKER, in a tablespace with a compression algorithm: a page_compressed page,
    // whose type holds its compressed size / 256.
    let compressed = page_compressed_space && page_type & 0x8000 != 0;
    let size = if compressed { usize::from(page_type & 0x7FFF) << 8 } else { page.len() };
    if size < DATA + 4 || size > page.len() {
        return Verdict::Corrupt(format!("a page_compressed size of {size} bytes"));
    }
    let (stored, computed) = (be32(page, size - 4), page_full_crc32(&page[..size]));
    if stored != computed {
        return Verdict::Corrupt(format!("full_crc32 checksum {stored:#010x}, computed {computed:#010x}"));
    }
    // Unencrypted (key version 0) uncompressed pages repeat the LSN's low 32 bits before the checksum.
    if !compressed && be32(page, 0) == 0 && page[LSN + 4..LSN + 8] != page[size - 8..size - 4] {
        return Verdict::Corrupt("the LSN in the trailer differs from the header's (a torn page)".into());
    }
    Verdict::Valid(Algorithm::FullCrc32)
}

fn check_zip(page: &[u8]) -> Verdict {
    let stored = be32(page, SPACE_OR_CHECKSUM);
    if stored == NO_CHECKSUM {
        return Verdict::Valid(Algorithm::None);
    }
    let crc = zip_page_crc32(page);
    if stored == crc {
        return Verdict::Valid(Algorithm::Crc32);
    }
    let adler = zip_page_innodb(page);
    if stored == adler {
        Verdict::Valid(Algorithm::Innodb)
    } else {
        Verdict::Corrupt(format!(
            "compressed-page checksum {stored:#010x} matches no algorithm (crc32 {crc:#010x}, innodb {adler:#010x})"
        ))
    }
}

fn check_classic(page: &[u8], context: PageContext) -> Verdict {
    let size = page.len();
    if CLASSIC_PAGE_COMPRESSED_TYPES.contains(&be16(page, PAGE_TYPE)) {
        return Verdict::Unverifiable("a page_compressed page (MariaDB before full_crc32)");
    }
    let (field1, field2) = (be32(page, SPACE_OR_CHECKSUM), be32(page, size - TRAILER));
    let lsn = u64::from_be_bytes(page[LSN..LSN + 8].try_into().expect("8 bytes"));
    if field1 == 0 && field2 == 0 && lsn == 0 {
        // Only an empty page may have no checksum: zero everywhere but the flush LSN field.
        let nonzero = !is_zero(&page[..FILE_FLUSH_LSN]) || !is_zero(&page[SPACE_ID..]);
        return if nonzero {
            Verdict::Corrupt("no checksum and no LSN on a page that is not empty".into())
        } else {
            Verdict::Valid(Algorithm::Zero)
        };
    }
    if page[LSN + 4..LSN + 8] != page[size - 4..] {
        return Verdict::Corrupt("the LSN in the trailer differs from the header's (a torn page)".into());
    }
    if field1 == NO_CHECKSUM && field2 == NO_CHECKSUM {
        return Verdict::Valid(Algorithm::None);
    }
    let crc = page_crc32(page);
    if field1 == crc && field2 == crc {
        return Verdict::Valid(Algorithm::Crc32);
    }
    let (new, old) = (page_innodb_new(page), page_innodb_old(page));
    if (field2 == old || field2 == be32(page, LSN)) && (field1 == 0 || field1 == new) {
        return Verdict::Valid(Algorithm::Innodb);
    }
    // MariaDB before full_crc32 stores an encrypted page's key version where MySQL has the flush LSN (0 but on
    // page 0), and the checksum of the encrypted page after it (`fil_space_verify_crypt_checksum`).
    if context.page_number != 0 && be32(page, FILE_FLUSH_LSN) != 0 {
        let stored = be32(page, FILE_FLUSH_LSN + 4);
        return if stored == crc {
            Verdict::Valid(Algorithm::Crc32)
        } else if stored == new {
            Verdict::Valid(Algorithm::Innodb)
        } else if stored == NO_CHECKSUM {
            Verdict::Valid(Algorithm::None)
        } else {
            Verdict::Corrupt(format!(
                "key version {} (an encrypted page) with checksum {stored:#010x}, computed crc32 {crc:#010x}",
                be32(page, FILE_FLUSH_LSN)
            ))
        };
    }
    Verdict::Corrupt(format!(
        "checksum fields {field1:#010x}/{field2:#010x} match no algorithm (crc32 {crc:#010x}, innodb {new:#010x}/{old:#010x})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PS: usize = 16384;

    fn space(format: Format) -> Tablespace {
        Tablespace { format, physical_page_size: PS, zip: false, page_compressed: true, system: false }
    }

    /// A page with a pseudo-random body, page number `n`, an LSN, and no checksum yet.
    fn body(n: u32, seed: u8) -> Vec<u8> {
        let mut page: Vec<u8> = (0..PS).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
        page[PAGE_NUMBER..PAGE_NUMBER + 4].copy_from_slice(&n.to_be_bytes());
        page[LSN..LSN + 8].copy_from_slice(&0x0000_0001_2345_6789u64.to_be_bytes());
        page[FILE_FLUSH_LSN..SPACE_ID].fill(0);
        // FIL_PAGE_INDEX: an ordinary page (the high bit would mark a page_compressed one).
        page[PAGE_TYPE..PAGE_TYPE + 2].copy_from_slice(&17855u16.to_be_bytes());
        page
    }

    fn put(page: &mut [u8], at: usize, value: u32) {
        page[at..at + 4].copy_from_slice(&value.to_be_bytes());
    }

    fn classic(n: u32, algorithm: Algorithm) -> Vec<u8> {
        let mut page = body(n, 7);
        let lsn_low = be32(&page, LSN + 4);
        put(&mut page, PS - 4, lsn_low);
        match algorithm {
            Algorithm::Crc32 => {
                let crc = page_crc32(&page);
                put(&mut page, 0, crc);
                put(&mut page, PS - 8, crc);
            }
            Algorithm::Innodb => {
                let new = page_innodb_new(&page);
                put(&mut page, 0, new);
                let old = page_innodb_old(&page);
                put(&mut page, PS - 8, old);
            }
            Algorithm::None => {
                put(&mut page, 0, NO_CHECKSUM);
                put(&mut page, PS - 8, NO_CHECKSUM);
            }
            _ => unreachable!(),
        }
        page
    }

    fn full_crc32(n: u32) -> Vec<u8> {
        let mut page = body(n, 9);
        put(&mut page, 0, 0); // key version 0: not encrypted
        let lsn_low = be32(&page, LSN + 4);
        put(&mut page, PS - 8, lsn_low);
        let crc = page_full_crc32(&page);
        put(&mut page, PS - 4, crc);
        page
    }

    fn at(n: u64, format: Format) -> PageContext {
        PageContext { space: space(format), page_number: n }
    }

    #[test]
    fn intact_pages_are_valid_with_their_algorithm() {
        for algorithm in [Algorithm::Crc32, Algorithm::Innodb, Algorithm::None] {
            assert_eq!(check_page(&classic(5, algorithm), at(5, Format::Classic)), Verdict::Valid(algorithm));
        }
        assert_eq!(check_page(&full_crc32(5), at(5, Format::FullCrc32)), Verdict::Valid(Algorithm::FullCrc32));
        assert_eq!(check_page(&vec![0; PS], at(9, Format::Classic)), Verdict::Valid(Algorithm::Zero));
    }

    #[test]
    fn one_flipped_bit_anywhere_checked_is_corruption() {
        for (page, format) in [(classic(3, Algorithm::Crc32), Format::Classic), (full_crc32(3), Format::FullCrc32)] {
            for at_byte in [PAGE_TYPE, DATA, PS / 2, PS - 9] {
                let mut damaged = page.clone();
                damaged[at_byte] ^= 0x10;
                assert!(!check_page(&damaged, at(3, format)).is_ok(), "{format:?}: a flip at {at_byte} passed");
            }
        }
        let mut innodb = classic(3, Algorithm::Innodb);
        innodb[DATA + 100] ^= 1;
        assert!(!check_page(&innodb, at(3, Format::Classic)).is_ok());
    }

    #[test]
    fn a_torn_page_is_corruption_even_with_a_matching_checksum() {
        // A page whose first half is new and second half old: the trailer's LSN is the old one.
        let mut page = classic(4, Algorithm::None);
        page[PS - 1] ^= 1;
        let verdict = check_page(&page, at(4, Format::Classic));
        assert!(matches!(&verdict, Verdict::Corrupt(why) if why.contains("torn")), "{verdict:?}");
    }

    #[test]
    fn the_page_number_must_be_the_pages_place() {
        let verdict = check_page(&classic(6, Algorithm::Crc32), at(7, Format::Classic));
        assert!(matches!(&verdict, Verdict::Corrupt(why) if why.contains("page 6")), "{verdict:?}");
    }

    #[test]
    fn the_doublewrite_buffer_is_skipped_in_the_system_tablespace_only() {
        let mut system = space(Format::Classic);
        system.system = true;
        let garbage = vec![0xAB; PS];
        assert_eq!(check_page(&garbage, PageContext { space: system, page_number: 100 }), Verdict::Skipped);
        assert!(!check_page(&garbage, PageContext { space: system, page_number: 200 }).is_ok());
        assert!(!check_page(&garbage, at(100, Format::Classic)).is_ok());
    }

    #[test]
    fn an_empty_looking_page_with_data_is_corruption() {
        let mut page = vec![0u8; PS];
        page[FILE_FLUSH_LSN] = 1; // allowed
        assert!(check_page(&page, at(0, Format::Classic)).is_ok());
        page[DATA + 5] = 1;
        assert!(!check_page(&page, at(0, Format::Classic)).is_ok());
    }

    #[test]
    fn compressed_pages_are_checked_with_either_algorithm() {
        let zip = Tablespace {
            format: Format::Classic,
            physical_page_size: 8192,
            zip: true,
            page_compressed: false,
            system: false,
        };
        let context = PageContext { space: zip, page_number: 2 };
        let mut page = body(2, 5)[..8192].to_vec();
        let crc = zip_page_crc32(&page);
        put(&mut page, 0, crc);
        assert_eq!(check_page(&page, context), Verdict::Valid(Algorithm::Crc32));
        let adler = zip_page_innodb(&page);
        put(&mut page, 0, adler);
        assert_eq!(check_page(&page, context), Verdict::Valid(Algorithm::Innodb));
        page[4000] ^= 2;
        assert!(!check_page(&page, context).is_ok());
    }

    #[test]
    fn full_crc32_page_compressed_pages_are_checked_over_their_compressed_size() {
        let mut page = vec![0u8; PS];
        let size = 4096usize;
        page[..size].copy_from_slice(&body(2, 3)[..size]);
        page[PAGE_TYPE..PAGE_TYPE + 2].copy_from_slice(&(0x8000u16 | (size >> 8) as u16).to_be_bytes());
        let crc = page_full_crc32(&page[..size]);
        put(&mut page, size - 4, crc);
        assert_eq!(check_page(&page, at(2, Format::FullCrc32)), Verdict::Valid(Algorithm::FullCrc32));
        page[size - 10] ^= 1;
        assert!(!check_page(&page, at(2, Format::FullCrc32)).is_ok());
    }
}
