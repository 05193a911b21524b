//! A tablespace's format and page size, read from the FSP header of its first page.

use crate::checksum::{be32, DATA};

/// Where the FSP header keeps `FSP_SPACE_FLAGS`: `FIL_PAGE_DATA` + 16.
pub const FSP_SPACE_FLAGS: usize = DATA + 16;

/// Bytes of page 0 needed to read the flags.
pub const HEADER_LEN: usize = FSP_SPACE_FLAGS + 4;

/// The system tablespace's doublewrite buffer: pages 64 to 191 (two blocks of 64), which hold copies of other
/// tablespaces' pages and are skipped.
pub const DOUBLEWRITE_PAGES: std::ops::Range<u64> = 64..192;

/// How the tablespace's pages carry their checksums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// MariaDB 10.5+ `full_crc32`: one CRC-32C over the page at its end.
    FullCrc32,
    /// The classic layout, written with `crc32`, `innodb` or `none` (MySQL; MariaDB before full_crc32).
    Classic,
}

/// What the checks need to know about a tablespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tablespace {
    /// The checksum layout.
    pub format: Format,
    /// Bytes per page as stored in the file (a ROW_FORMAT=COMPRESSED tablespace stores smaller pages).
    pub physical_page_size: usize,
    /// Whether pages are ROW_FORMAT=COMPRESSED ones (`physical_page_size` < the logical page size).
    pub zip: bool,
    /// MariaDB full_crc32 with a page compression algorithm (PAGE_COMPRESSED=1): pages may be stored compressed.
    pub page_compressed: bool,
    /// The system tablespace (`ibdata*`): it holds the doublewrite buffer.
    pub system: bool,
}

impl Tablespace {
    /// Reads the format and page size from the start of page 0 (at least [`HEADER_LEN`] bytes) of the file named
    /// `file_name`; `Err` says why it cannot be told (not a tablespace, or flags this code does not know).
    pub fn from_first_page(header: &[u8], file_name: &str) -> Result<Tablespace, String> {
        if header.len() < HEADER_LEN {
            return Err(format!("shorter than a tablespace header ({} bytes)", header.len()));
        }
        let flags = be32(header, FSP_SPACE_FLAGS);
        let system = file_name.starts_with("ibdata");
        // MariaDB's FSP_FLAGS_FCRC32_MASK_MARKER; the page size is then in bits 0-3.
        if flags & (1 << 4) != 0 {
            let ssize = flags & 0xF;
            if !(3..=7).contains(&ssize) {
                return Err(format!("full_crc32 flags {flags:#x} give no valid page size"));
            }
            return Ok(Tablespace {
                format: Format::FullCrc32,
                physical_page_size: 512 << ssize,
                zip: false,
                // FSP_FLAGS_FCRC32_POS_COMPRESSED_ALGO: bits 5-7.
                page_compressed: (flags >> 5) & 0x7 != 0,
                system,
            });
        }
        let page_ssize = (flags >> 6) & 0xF;
        let logical = match page_ssize {
            0 => 16384,
            3..=7 => 512 << page_ssize,
            _ => return Err(format!("flags {flags:#x} give no valid page size")),
        };
        let zip_ssize = (flags >> 1) & 0xF;
        let physical = match zip_ssize {
            0 => logical,
            1..=5 => 512 << zip_ssize,
            _ => return Err(format!("flags {flags:#x} give no valid compressed page size")),
        };
        if physical > logical {
            return Err(format!("flags {flags:#x}: compressed pages larger than the page size"));
        }
        Ok(Tablespace {
            format: Format::Classic,
            physical_page_size: physical,
            zip: physical < logical,
            page_compressed: false,
            system,
        })
    }
}

/// Whether a file of this name is an InnoDB tablespace `--validate-pages` checks: `*.ibd` (incl. `mysql.ibd`),
/// `*.ibu`, `ibdata*`, `undo*`.
pub fn is_tablespace_name(file_name: &str) -> bool {
    file_name.ends_with(".ibd")
        || file_name.ends_with(".ibu")
        || file_name.starts_with("ibdata")
        || file_name.starts_with("undo")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(flags: u32) -> Vec<u8> {
        let mut page = vec![0u8; HEADER_LEN];
        page[FSP_SPACE_FLAGS..].copy_from_slice(&flags.to_be_bytes());
        page
    }

    #[test]
    fn classic_flags_give_the_page_and_zip_sizes() {
        let plain = Tablespace::from_first_page(&header(0), "t.ibd").unwrap();
        assert_eq!((plain.format, plain.physical_page_size, plain.zip), (Format::Classic, 16384, false));
        // page_ssize 3 (4K), in bits 6-9.
        assert_eq!(Tablespace::from_first_page(&header(3 << 6), "t.ibd").unwrap().physical_page_size, 4096);
        // zip_ssize 4 (8K), in bits 1-4, with a 16K page.
        let zip = Tablespace::from_first_page(&header((4 << 1) | 1), "t.ibd").unwrap();
        assert_eq!((zip.physical_page_size, zip.zip), (8192, true));
        assert!(Tablespace::from_first_page(&header(1 << 6), "t.ibd").is_err());
    }

    #[test]
    fn full_crc32_flags_give_the_page_size() {
        let space = Tablespace::from_first_page(&header((1 << 4) | 5), "ibdata1").unwrap();
        assert_eq!((space.format, space.physical_page_size, space.system), (Format::FullCrc32, 16384, true));
        assert_eq!(Tablespace::from_first_page(&header((1 << 4) | 7), "x.ibd").unwrap().physical_page_size, 65536);
        assert!(!space.page_compressed);
        assert!(Tablespace::from_first_page(&header((1 << 4) | (1 << 5) | 5), "x.ibd").unwrap().page_compressed);
        assert!(Tablespace::from_first_page(&header((1 << 4) | 1), "x.ibd").is_err());
        assert!(Tablespace::from_first_page(&header(0)[..10], "x.ibd").is_err());
    }

    #[test]
    fn tablespace_names() {
        for name in ["t1.ibd", "mysql.ibd", "ibdata1", "undo001", "undo_002", "u.ibu"] {
            assert!(is_tablespace_name(name), "{name}");
        }
        for name in ["t1.frm", "ib_logfile0", "aria_log.00000001", "t.ibd.zst", "xtrabackup_checkpoints"] {
            assert!(!is_tablespace_name(name), "{name}");
        }
    }
}
