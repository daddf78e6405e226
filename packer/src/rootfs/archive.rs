//! A streaming tar reader with hard limits.
//!
//! `tar::Header` decodes the fields (octal and base-256 numbers, ustar prefixes); the
//! stream is walked here because `tar::Entries` reads PAX and GNU long-name headers into
//! memory whatever their declared size, and does not read PAX sparse files. Handled:
//! ustar/GNU/PAX headers, GNU long names and link names, PAX `path`, `linkpath`, `size`,
//! `uid`, `gid`, `mtime`, `SCHILY.xattr.*`, GNU sparse (old format) and PAX sparse 0.0,
//! 0.1 and 1.0. PAX global headers are read and ignored, as docker does.

use std::io::{self, Read};

use tar::{EntryType, GnuExtSparseHeader, Header};

use super::LayerError;
use super::tree::Xattr;

const BLOCK: u64 = 512;

/// Sizes the reader refuses to buffer.
#[derive(Clone, Copy)]
pub(crate) struct Limits {
    /// Longest path or link name, in bytes.
    pub max_path_len: usize,
    /// Largest PAX header, GNU sparse map or PAX sparse map, in bytes.
    pub max_extension: u64,
}

/// What kind of filesystem object an entry describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryKind {
    File,
    Dir,
    Symlink,
    Hardlink,
    CharDev,
    BlockDev,
    Fifo,
}

/// One archive member with its extension headers applied.
#[derive(Debug)]
pub(crate) struct Entry {
    pub path: Vec<u8>,
    /// Symlink or hardlink target.
    pub link: Vec<u8>,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u32,
    pub major: u32,
    pub minor: u32,
    /// `SCHILY.xattr.*` records, in archive order.
    pub xattrs: Vec<Xattr>,
    /// Logical size of a regular file (holes included).
    pub size: u64,
    /// Stored data segments as (offset in the file, length); one segment unless sparse.
    segments: Vec<(u64, u64)>,
}

/// Why [`Archive::read_data`] stopped: the archive, or the sink it writes to.
#[derive(Debug)]
pub(crate) enum DataError {
    Layer(LayerError),
    Sink(io::Error),
}

/// Reads entries one after the other; data not read by [`Archive::read_data`] is skipped.
pub(crate) struct Archive<R> {
    r: R,
    /// Bytes consumed from the uncompressed stream.
    pos: u64,
    /// Data and padding of the current entry still to skip before the next header.
    skip: u64,
    limits: Limits,
    /// Reused for every entry's data.
    buf: Vec<u8>,
}

/// Extension records collected for the next entry.
#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u32>,
    gid: Option<u32>,
    mtime: Option<u32>,
    xattrs: Vec<Xattr>,
    sparse_name: Option<Vec<u8>>,
    sparse_size: Option<u64>,
    sparse_major: Option<u64>,
    sparse_map: Option<Vec<u64>>,
}

impl<R: Read> Archive<R> {
    pub(crate) fn new(r: R, limits: Limits) -> Self {
        Archive {
            r,
            pos: 0,
            skip: 0,
            limits,
            buf: vec![0; 256 * 1024],
        }
    }

    /// Consumes the rest of the stream, so that a gzip or zstd trailer (checksum) is read
    /// and verified.
    pub(crate) fn drain(mut self) -> Result<(), LayerError> {
        io::copy(&mut self.r, &mut io::sink())
            .map(drop)
            .map_err(LayerError::Read)
    }

    /// The next entry, or `None` at the end of the archive.
    pub(crate) fn next_entry(&mut self) -> Result<Option<Entry>, LayerError> {
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax = Pax::default();
        loop {
            self.skip_pending()?;
            let offset = self.pos;
            let mut block = [0u8; BLOCK as usize];
            match self.read_full(&mut block)? {
                0 => return Ok(None),
                n if n < block.len() => return Err(LayerError::TruncatedHeader { offset }),
                _ => {}
            }
            if block.iter().all(|&b| b == 0) {
                return Ok(None);
            }
            let header = Header::from_byte_slice(&block);
            check_checksum(header, offset)?;
            let bad = |field| LayerError::BadField { offset, field };
            let raw_size = header.entry_size().map_err(|_| bad("size"))?;
            let entry_type = header.entry_type();
            match entry_type {
                EntryType::GNULongName | EntryType::GNULongLink => {
                    let limit = self.limits.max_path_len as u64 + 1;
                    let mut name = self.read_extension(raw_size, limit, "GNU long name", offset)?;
                    while name.last() == Some(&0) {
                        name.pop();
                    }
                    if entry_type == EntryType::GNULongName {
                        long_name = Some(name)
                    } else {
                        long_link = Some(name)
                    }
                    continue;
                }
                EntryType::XHeader => {
                    let data =
                        self.read_extension(raw_size, self.limits.max_extension, "pax", offset)?;
                    pax = parse_pax(&data, offset)?;
                    continue;
                }
                EntryType::XGlobalHeader => {
                    self.read_extension(raw_size, self.limits.max_extension, "pax global", offset)?;
                    continue;
                }
                _ => {}
            }
            // A PAX size overrides the header's, which may be truncated or absent.
            let stored = pax.size.unwrap_or(raw_size);

            let mut path = long_name
                .or(pax.sparse_name.take())
                .or(pax.path.take())
                .unwrap_or_else(|| header.path_bytes().into_owned());
            let link = long_link.or(pax.link.take()).unwrap_or_else(|| {
                header
                    .link_name_bytes()
                    .map(|l| l.into_owned())
                    .unwrap_or_default()
            });
            let kind = match entry_type {
                EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                    EntryKind::File
                }
                EntryType::Directory => EntryKind::Dir,
                EntryType::Symlink => EntryKind::Symlink,
                EntryType::Link => EntryKind::Hardlink,
                EntryType::Char => EntryKind::CharDev,
                EntryType::Block => EntryKind::BlockDev,
                EntryType::Fifo => EntryKind::Fifo,
                other => {
                    return Err(LayerError::UnsupportedType {
                        entry: lossy(&path),
                        type_flag: other.as_byte() as char,
                    });
                }
            };
            // Old tars mark directories with a trailing slash on a regular entry.
            let kind = if kind == EntryKind::File && path.last() == Some(&b'/') {
                EntryKind::Dir
            } else {
                kind
            };
            while path.len() > 1 && path.last() == Some(&b'/') {
                path.pop();
            }
            let (major, minor) = match kind {
                EntryKind::CharDev | EntryKind::BlockDev => (
                    header
                        .device_major()
                        .ok()
                        .flatten()
                        .ok_or_else(|| bad("device major"))?,
                    header
                        .device_minor()
                        .ok()
                        .flatten()
                        .ok_or_else(|| bad("device minor"))?,
                ),
                _ => (0, 0),
            };
            let id = |v: u64, field| u32::try_from(v).map_err(|_| bad(field));
            let mut entry = Entry {
                kind,
                mode: header.mode().map_err(|_| bad("mode"))?,
                uid: match pax.uid {
                    Some(uid) => uid,
                    None => id(header.uid().map_err(|_| bad("uid"))?, "uid")?,
                },
                gid: match pax.gid {
                    Some(gid) => gid,
                    None => id(header.gid().map_err(|_| bad("gid"))?, "gid")?,
                },
                mtime: match pax.mtime {
                    Some(mtime) => mtime,
                    None => clamp_time(header.mtime().map_err(|_| bad("mtime"))?),
                },
                major,
                minor,
                xattrs: std::mem::take(&mut pax.xattrs),
                size: stored,
                segments: vec![(0, stored)],
                path,
                link,
            };
            self.skip = stored.div_ceil(BLOCK) * BLOCK;
            if entry_type == EntryType::GNUSparse {
                self.read_gnu_sparse(header, &mut entry, offset)?;
            } else if pax.sparse_major == Some(1) {
                self.read_pax_sparse_map(&mut entry, pax.sparse_size, offset)?;
            } else if let Some(map) = pax.sparse_map.take() {
                let size = pax.sparse_size.ok_or_else(|| bad("GNU.sparse.size"))?;
                set_sparse(&mut entry, &map, size, stored)?;
            }
            return Ok(Some(entry));
        }
    }

    /// Streams the current entry's data to `sink` as (offset in the file, bytes). Holes of
    /// sparse files are not passed: they read as zeros.
    pub(crate) fn read_data(
        &mut self,
        entry: &Entry,
        mut sink: impl FnMut(u64, &[u8]) -> io::Result<()>,
    ) -> Result<(), DataError> {
        // Taken out of `self` so `read_full` can borrow it; put back on every path.
        let mut buf = std::mem::take(&mut self.buf);
        let result = self.read_segments(entry, &mut buf, &mut sink);
        self.buf = buf;
        result
    }

    fn read_segments(
        &mut self,
        entry: &Entry,
        buf: &mut [u8],
        sink: &mut impl FnMut(u64, &[u8]) -> io::Result<()>,
    ) -> Result<(), DataError> {
        let declared: u64 = entry.segments.iter().map(|s| s.1).sum();
        let mut read = 0;
        for &(offset, len) in &entry.segments {
            let mut done = 0;
            while done < len {
                let want = buf.len().min((len - done) as usize);
                let n = self.read_full(&mut buf[..want]).map_err(DataError::Layer)?;
                if n == 0 {
                    return Err(DataError::Layer(LayerError::TruncatedEntry {
                        entry: lossy(&entry.path),
                        declared,
                        read,
                    }));
                }
                sink(offset + done, &buf[..n]).map_err(DataError::Sink)?;
                done += n as u64;
                read += n as u64;
                self.skip -= n as u64;
            }
        }
        Ok(())
    }

    fn skip_pending(&mut self) -> Result<(), LayerError> {
        let want = std::mem::take(&mut self.skip);
        let skipped =
            io::copy(&mut (&mut self.r).take(want), &mut io::sink()).map_err(LayerError::Read)?;
        self.pos += skipped;
        if skipped < want {
            return Err(LayerError::TruncatedHeader { offset: self.pos });
        }
        Ok(())
    }

    /// Fills `buf` unless the stream ends; returns the bytes read.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, LayerError> {
        let mut n = 0;
        while n < buf.len() {
            match self.r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(LayerError::Read(e)),
            }
        }
        self.pos += n as u64;
        Ok(n)
    }

    /// Reads an extension header's data (and its padding) after checking its size.
    fn read_extension(
        &mut self,
        size: u64,
        limit: u64,
        kind: &'static str,
        offset: u64,
    ) -> Result<Vec<u8>, LayerError> {
        if size > limit {
            return Err(LayerError::ExtensionTooLarge {
                offset,
                kind,
                size,
                limit,
            });
        }
        let mut data = vec![0; size as usize];
        if self.read_full(&mut data)? < data.len() {
            return Err(LayerError::TruncatedHeader { offset });
        }
        self.skip = size.div_ceil(BLOCK) * BLOCK - size;
        Ok(data)
    }

    /// GNU sparse: four map entries in the header, 21 more per extension block after it.
    fn read_gnu_sparse(
        &mut self,
        header: &Header,
        entry: &mut Entry,
        offset: u64,
    ) -> Result<(), LayerError> {
        let gnu = header.as_gnu().ok_or(LayerError::BadField {
            offset,
            field: "GNU sparse header",
        })?;
        let bad_map = |reason| LayerError::BadSparse {
            entry: lossy(&entry.path),
            reason,
        };
        let mut map = Vec::new();
        let mut push = |s: &tar::GnuSparseHeader| -> Result<(), LayerError> {
            if !s.is_empty() {
                map.push(s.offset().map_err(|_| bad_map("unreadable offset"))?);
                map.push(s.length().map_err(|_| bad_map("unreadable length"))?);
            }
            Ok(())
        };
        gnu.sparse.iter().try_for_each(&mut push)?;
        let mut extended = gnu.is_extended();
        let mut ext_bytes = 0;
        while extended {
            ext_bytes += BLOCK;
            if ext_bytes > self.limits.max_extension {
                return Err(bad_map("too many extension blocks"));
            }
            let mut ext = GnuExtSparseHeader::new();
            if self.read_full(ext.as_mut_bytes())? < BLOCK as usize {
                return Err(LayerError::TruncatedHeader { offset: self.pos });
            }
            ext.sparse().iter().try_for_each(&mut push)?;
            extended = ext.is_extended();
        }
        let real = gnu
            .real_size()
            .map_err(|_| bad_map("unreadable real size"))?;
        let stored = entry.size;
        set_sparse(entry, &map, real, stored)
    }

    /// PAX sparse 1.0: the map is text at the start of the data, padded to a block.
    fn read_pax_sparse_map(
        &mut self,
        entry: &mut Entry,
        real: Option<u64>,
        offset: u64,
    ) -> Result<(), LayerError> {
        let bad_map = |reason| LayerError::BadSparse {
            entry: lossy(&entry.path),
            reason,
        };
        let real = real.ok_or_else(|| bad_map("no GNU.sparse.realsize"))?;
        let mut text = Vec::new();
        let mut parsed = 0;
        let mut numbers: Vec<u64> = Vec::new();
        // Numbers expected: the segment count, then an offset and a length per segment.
        let mut want: Option<usize> = None;
        loop {
            while want.is_none_or(|n| numbers.len() < n) {
                let Some(nl) = text[parsed..].iter().position(|&b| b == b'\n') else {
                    break;
                };
                let number = parse_decimal(&text[parsed..parsed + nl])
                    .ok_or_else(|| bad_map("map is not decimal numbers"))?;
                parsed += nl + 1;
                numbers.push(number);
                if want.is_none() {
                    let count = usize::try_from(number)
                        .ok()
                        .and_then(|c| c.checked_mul(2)?.checked_add(1));
                    want = Some(count.ok_or_else(|| bad_map("segment count overflows"))?);
                }
            }
            if want.is_some_and(|n| numbers.len() >= n) {
                break;
            }
            if text.len() as u64 >= self.limits.max_extension {
                let limit = self.limits.max_extension;
                return Err(LayerError::ExtensionTooLarge {
                    offset,
                    kind: "pax sparse map",
                    size: text.len() as u64,
                    limit,
                });
            }
            let start = text.len();
            text.resize(start + BLOCK as usize, 0);
            if self.read_full(&mut text[start..])? < BLOCK as usize {
                return Err(LayerError::TruncatedEntry {
                    entry: lossy(&entry.path),
                    declared: entry.size,
                    read: start as u64,
                });
            }
            self.skip = self.skip.saturating_sub(BLOCK);
        }
        let map_len = text.len() as u64;
        let stored = entry
            .size
            .checked_sub(map_len)
            .ok_or_else(|| bad_map("map is larger than the entry"))?;
        set_sparse(entry, &numbers[1..], real, stored)
    }
}

/// Installs a sparse map given as flat (offset, length) pairs, after checking that the
/// segments are ordered, inside the file, and add up to the stored data.
fn set_sparse(entry: &mut Entry, flat: &[u64], real: u64, stored: u64) -> Result<(), LayerError> {
    let bad_map = |reason| LayerError::BadSparse {
        entry: lossy(&entry.path),
        reason,
    };
    if !flat.len().is_multiple_of(2) {
        return Err(bad_map("odd number of map values"));
    }
    let mut segments = Vec::with_capacity(flat.len() / 2);
    let mut end = 0u64;
    let mut total = 0u64;
    for pair in flat.chunks_exact(2) {
        let (offset, len) = (pair[0], pair[1]);
        let seg_end = offset
            .checked_add(len)
            .ok_or_else(|| bad_map("segment end overflows"))?;
        if offset < end {
            return Err(bad_map("segments overlap or are out of order"));
        }
        if seg_end > real {
            return Err(bad_map("segment ends past the file size"));
        }
        end = seg_end;
        total += len;
        if len > 0 {
            segments.push((offset, len));
        }
    }
    if total != stored {
        return Err(bad_map("segment lengths do not add up to the stored data"));
    }
    entry.segments = segments;
    entry.size = real;
    Ok(())
}

fn check_checksum(header: &Header, offset: u64) -> Result<(), LayerError> {
    let want = header
        .cksum()
        .map_err(|_| LayerError::Checksum { offset })?;
    let bytes = header.as_bytes();
    let field = 148..156;
    let (mut unsigned, mut signed) = (0u32, 0i64);
    for (i, &b) in bytes.iter().enumerate() {
        let b = if field.contains(&i) { b' ' } else { b };
        unsigned += u32::from(b);
        signed += i64::from(b as i8);
    }
    // Some old tar writers summed signed bytes; GNU tar and Go accept both.
    if unsigned == want || signed == i64::from(want) {
        Ok(())
    } else {
        Err(LayerError::Checksum { offset })
    }
}

/// Parses PAX records: `"<len> <key>=<value>\n"`, values may be binary.
fn parse_pax(mut data: &[u8], offset: u64) -> Result<Pax, LayerError> {
    let bad = |field| LayerError::BadField { offset, field };
    let mut pax = Pax::default();
    while !data.is_empty() {
        let space = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("pax record length"))?;
        let len = parse_decimal(&data[..space]).ok_or_else(|| bad("pax record length"))?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l > space + 1 && l <= data.len())
            .ok_or_else(|| bad("pax record length"))?;
        let record = data[space + 1..len]
            .strip_suffix(b"\n")
            .ok_or_else(|| bad("pax record terminator"))?;
        data = &data[len..];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad("pax record"))?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        let number = |field| parse_decimal(value).ok_or_else(|| bad(field));
        match key {
            b"path" => pax.path = Some(value.to_vec()),
            b"linkpath" => pax.link = Some(value.to_vec()),
            b"size" => pax.size = Some(number("pax size")?),
            b"uid" => {
                pax.uid = Some(u32::try_from(number("pax uid")?).map_err(|_| bad("pax uid"))?)
            }
            b"gid" => {
                pax.gid = Some(u32::try_from(number("pax gid")?).map_err(|_| bad("pax gid"))?)
            }
            b"mtime" => pax.mtime = Some(parse_pax_time(value).ok_or_else(|| bad("pax mtime"))?),
            b"GNU.sparse.name" => pax.sparse_name = Some(value.to_vec()),
            b"GNU.sparse.realsize" | b"GNU.sparse.size" => {
                pax.sparse_size = Some(number("GNU.sparse.size")?)
            }
            b"GNU.sparse.major" => pax.sparse_major = Some(number("GNU.sparse.major")?),
            b"GNU.sparse.map" => {
                let map = value
                    .split(|&b| b == b',')
                    .map(parse_decimal)
                    .collect::<Option<Vec<_>>>();
                pax.sparse_map = Some(map.ok_or_else(|| bad("GNU.sparse.map"))?);
            }
            // Format 0.0 repeats these two keys, one pair per segment, in order.
            b"GNU.sparse.offset" | b"GNU.sparse.numbytes" => {
                pax.sparse_map
                    .get_or_insert_with(Vec::new)
                    .push(number("GNU.sparse.offset")?);
            }
            _ => {
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    pax.xattrs.push(Xattr {
                        name: name.to_vec(),
                        value: value.to_vec(),
                    });
                }
            }
        }
    }
    Ok(pax)
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// PAX times are decimal seconds with an optional fraction and sign; squashfs keeps
/// unsigned 32-bit seconds, so earlier times become 0 and later ones saturate.
fn parse_pax_time(s: &[u8]) -> Option<u32> {
    let whole = s.split(|&b| b == b'.').next()?;
    match whole.strip_prefix(b"-") {
        Some(digits) => parse_decimal(digits).map(|_| 0),
        None => parse_decimal(whole).map(clamp_time),
    }
}

fn clamp_time(t: u64) -> u32 {
    u32::try_from(t).unwrap_or(u32::MAX)
}

/// Entry paths for messages.
pub(crate) fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_with_binary_values_parse() {
        let value = b"\x01\x00\x00\x02\n=";
        // Two length digits, a space, the key and '=', the value, a newline: 43 bytes.
        let record_len = 2 + 1 + "SCHILY.xattr.security.capability=".len() + value.len() + 1;
        let mut data = format!("{record_len} SCHILY.xattr.security.capability=").into_bytes();
        data.extend_from_slice(value);
        data.push(b'\n');
        data.extend_from_slice(b"15 mtime=-12.5\n");
        let pax = parse_pax(&data, 0).unwrap();
        assert_eq!(
            pax.xattrs,
            vec![Xattr {
                name: b"security.capability".to_vec(),
                value: value.to_vec()
            }]
        );
        assert_eq!(pax.mtime, Some(0));
    }

    #[test]
    fn malformed_pax_records_are_refused() {
        for data in [
            &b"99 path=x\n"[..],
            b"x path=x\n",
            b"9 pathx\n\n",
            b"10 path=ab",
        ] {
            assert!(
                matches!(
                    parse_pax(data, 7),
                    Err(LayerError::BadField { offset: 7, .. })
                ),
                "{data:?}"
            );
        }
    }

    #[test]
    fn pax_times_clamp_to_u32() {
        assert_eq!(parse_pax_time(b"1700000000.25"), Some(1_700_000_000));
        assert_eq!(parse_pax_time(b"99999999999"), Some(u32::MAX));
        assert_eq!(parse_pax_time(b"-1"), Some(0));
        assert_eq!(parse_pax_time(b"x"), None);
    }
}
