//! Writes a squashfs 4.0 image with zstd compression from a flattened [`Tree`].
//!
//! Our own writer rather than backhand's `FilesystemWriter`: backhand 0.25 gives every
//! node its own inode (no hardlinks), writes no xattrs and compresses on one thread.
//!
//! Layout, in the order the Linux kernel's sanity checks require (`fs/squashfs/super.c`
//! checks that each table ends before the next one starts, and that the xattr id index
//! ends exactly at `bytes_used`):
//!
//! ```text
//! superblock | data blocks + fragment blocks | inode table | directory table
//! | fragment entries, index | id entries, index | xattr pairs, xattr ids, xattr index
//! ```
//!
//! The output depends only on the tree: children are visited in byte order of their
//! names, inode numbers follow that walk, and the superblock time is fixed at zero.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::tree::{Content, Kind, Meta, NodeId, ROOT, Tree, Xattr};

/// Size of a data block. 128 KiB is mksquashfs' default: large enough to compress well,
/// small enough that reading one small file decompresses little.
pub(crate) const BLOCK_SIZE: u32 = 128 * 1024;
const BLOCK_LOG: u16 = 17;
const SUPERBLOCK_LEN: usize = 96;
const MAGIC: u32 = 0x7371_7368;
const COMPRESSOR_ZSTD: u16 = 6;
/// Uncompressed size of one metadata block.
const METADATA_SIZE: usize = 8192;
const METADATA_UNCOMPRESSED: u16 = 1 << 15;
const BLOCK_UNCOMPRESSED: u32 = 1 << 24;
const INVALID_TABLE: u64 = u64::MAX;
const NO_FRAGMENT: u32 = u32::MAX;
const NO_XATTR: u32 = u32::MAX;
const FLAG_NO_XATTRS: u16 = 0x0200;
/// Images are padded to 4 KiB so that block devices see whole sectors.
const PAD_TO: u64 = 4096;
/// Uncompressed bytes gathered before one parallel compression round.
const BATCH_BYTES: usize = 16 << 20;
/// The kernel limits a directory entry name to 256 bytes; Linux names are at most 255.
pub(crate) const MAX_NAME_LEN: usize = 255;
/// squashfs stores uid and gid as 16-bit indexes into the id table.
pub(crate) const MAX_IDS: usize = 1 << 16;

/// Basic inode types; the extended variant of each is `basic + 7`.
const DIR: u16 = 1;
const FILE: u16 = 2;
const SYMLINK: u16 = 3;
const BLOCK_DEV: u16 = 4;
const CHAR_DEV: u16 = 5;
const FIFO: u16 = 6;
const EXTENDED: u16 = 7;

/// How to write the image.
pub(crate) struct WriteOptions {
    pub zstd_level: i32,
    pub threads: usize,
}

/// Why writing the image failed.
#[derive(Debug)]
pub(crate) enum WriteError {
    Io(io::Error),
    TooManyIds(usize),
}

impl From<io::Error> for WriteError {
    fn from(e: io::Error) -> Self {
        WriteError::Io(e)
    }
}

/// What was written.
pub(crate) struct WriteStats {
    pub inodes: u32,
    pub bytes: u64,
}

/// Writes the image for `tree`, reading file contents from `spool`, to `out` (at offset 0).
pub(crate) fn write_image(
    tree: &Tree,
    spool: &File,
    out: &mut File,
    opts: &WriteOptions,
) -> Result<WriteStats, WriteError> {
    let plan = Plan::new(tree);
    let ids = IdTable::new(tree, &plan.order)?;
    let mut w = Counting {
        inner: BufWriter::with_capacity(1 << 20, &mut *out),
        pos: 0,
    };
    w.write_all(&[0; SUPERBLOCK_LEN])?;

    let mut data = DataWriter::new(opts);
    for &id in &plan.order {
        if let Kind::File(content) = tree.node(id).kind {
            data.add_file(id, content, spool, &mut w)?;
        }
    }
    data.finish(&mut w)?;

    let mut inodes = InodeWriter {
        tree,
        plan: &plan,
        ids: &ids,
        files: &data.files,
        inode_table: MetadataWriter::new(opts.zstd_level),
        dir_table: MetadataWriter::new(opts.zstd_level),
        xattrs: XattrTable::default(),
        refs: vec![None; tree.nodes.len()],
    };
    let root_ref = inodes.write_dir(ROOT, plan.count + 1)?;

    let mut sb = SuperBlock {
        root_inode: root_ref.raw(),
        inodes: plan.count,
        ..Default::default()
    };
    sb.inode_table = w.pos;
    w.write_all(&inodes.inode_table.finish()?)?;
    sb.dir_table = w.pos;
    w.write_all(&inodes.dir_table.finish()?)?;

    sb.fragments = u32::try_from(data.fragments.len()).expect("fragments are counted in u32");
    sb.fragment_table = if data.fragments.is_empty() {
        INVALID_TABLE
    } else {
        let entries: Vec<u8> = data
            .fragments
            .iter()
            .flat_map(|&(start, size)| {
                let mut e = [0u8; 16];
                e[..8].copy_from_slice(&start.to_le_bytes());
                e[8..12].copy_from_slice(&size.to_le_bytes());
                e
            })
            .collect();
        write_table(&mut w, &entries, opts.zstd_level)?
    };
    let id_entries: Vec<u8> = ids.values.iter().flat_map(|v| v.to_le_bytes()).collect();
    sb.id_table = write_table(&mut w, &id_entries, opts.zstd_level)?;
    sb.id_count = u16::try_from(ids.values.len()).unwrap_or(u16::MAX);
    sb.xattr_table = inodes.xattrs.write(&mut w, opts.zstd_level)?;
    if sb.xattr_table == INVALID_TABLE {
        sb.flags |= FLAG_NO_XATTRS;
    }
    sb.bytes_used = w.pos;

    let padded = sb.bytes_used.div_ceil(PAD_TO) * PAD_TO;
    io::copy(&mut io::repeat(0).take(padded - sb.bytes_used), &mut w)?;
    w.inner.flush()?;
    drop(w);
    out.seek(SeekFrom::Start(0))?;
    out.write_all(&sb.encode())?;
    Ok(WriteStats {
        inodes: plan.count,
        bytes: padded,
    })
}

/// Inode numbers and link counts, from one walk of the tree.
struct Plan {
    /// Inode number per node, 0 when unreachable.
    ino: Vec<u32>,
    /// Directory entries naming each node (directories: 2 + subdirectories).
    nlink: Vec<u32>,
    /// Reachable nodes in inode-number order.
    order: Vec<NodeId>,
    count: u32,
}

impl Plan {
    fn new(tree: &Tree) -> Self {
        let n = tree.nodes.len();
        let mut plan = Plan {
            ino: vec![0; n],
            nlink: vec![0; n],
            order: Vec::new(),
            count: 0,
        };
        plan.number(ROOT);
        // Iterative so that deep trees cannot overflow the stack.
        let mut stack = vec![ROOT];
        while let Some(dir) = stack.pop() {
            let children = tree.children(dir).expect("only directories are stacked");
            let mut subdirs = Vec::new();
            for &child in children.values() {
                plan.nlink[child as usize] += 1;
                plan.number(child);
                if tree.is_dir(child) {
                    subdirs.push(child);
                }
            }
            plan.nlink[dir as usize] = 2 + subdirs.len() as u32;
            // Reversed so that the first subdirectory is numbered next.
            stack.extend(subdirs.into_iter().rev());
        }
        plan
    }

    /// Numbers `id` on its first visit; siblings get consecutive numbers, which keeps
    /// directory headers (which store numbers as 16-bit deltas) few.
    fn number(&mut self, id: NodeId) {
        if self.ino[id as usize] == 0 {
            self.count += 1;
            self.ino[id as usize] = self.count;
            self.order.push(id);
        }
    }
}

/// The uids and gids in use, sorted, each stored once.
struct IdTable {
    values: Vec<u32>,
    index: HashMap<u32, u16>,
}

impl IdTable {
    fn new(tree: &Tree, order: &[NodeId]) -> Result<Self, WriteError> {
        let mut set = std::collections::BTreeSet::new();
        for &id in order {
            let meta = &tree.node(id).meta;
            set.insert(meta.uid);
            set.insert(meta.gid);
        }
        if set.len() > MAX_IDS {
            return Err(WriteError::TooManyIds(set.len()));
        }
        let values: Vec<u32> = set.into_iter().collect();
        let index = values
            .iter()
            .enumerate()
            .map(|(i, &v)| (v, i as u16))
            .collect();
        Ok(IdTable { values, index })
    }

    fn get(&self, id: u32) -> u16 {
        self.index[&id]
    }
}

/// A writer that knows how many bytes went through it.
struct Counting<W> {
    inner: W,
    pos: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Where a file's data went.
#[derive(Clone, Default)]
struct FileData {
    blocks_start: u64,
    /// Per block: compressed size (with [`BLOCK_UNCOMPRESSED`] when stored raw), 0 for a hole.
    sizes: Vec<u32>,
    /// (fragment index, offset in the fragment) for files smaller than a block.
    fragment: Option<(u32, u32)>,
    /// Bytes stored as holes.
    sparse: u64,
    started: bool,
}

/// Where a compressed block belongs once it is written.
enum Target {
    Block { file: NodeId, index: usize },
    Fragment(u32),
}

struct Job {
    data: Vec<u8>,
    target: Target,
}

/// Cuts files into blocks, packs small files into fragments, and compresses a batch of
/// blocks on all threads at once before writing them in order.
struct DataWriter {
    level: i32,
    threads: usize,
    batch: Vec<Job>,
    batch_bytes: usize,
    fragment: Vec<u8>,
    /// (start, size) of each written fragment block.
    fragments: Vec<(u64, u32)>,
    files: HashMap<NodeId, FileData>,
}

impl DataWriter {
    fn new(opts: &WriteOptions) -> Self {
        DataWriter {
            level: opts.zstd_level,
            threads: opts.threads.max(1),
            batch: Vec::new(),
            batch_bytes: 0,
            fragment: Vec::new(),
            fragments: Vec::new(),
            files: HashMap::new(),
        }
    }

    fn add_file<W: Write>(
        &mut self,
        id: NodeId,
        content: Content,
        spool: &File,
        w: &mut Counting<W>,
    ) -> io::Result<()> {
        // Entered first: a batch flushed while this file is queued writes its sizes here.
        self.files.insert(id, FileData::default());
        let block = u64::from(BLOCK_SIZE);
        if content.len > 0 && content.len < block {
            let mut data = vec![0; content.len as usize];
            spool.read_exact_at(&mut data, content.offset)?;
            if self.fragment.len() + data.len() > BLOCK_SIZE as usize {
                self.seal_fragment(w)?;
            }
            let at = (self.fragments.len() as u32, self.fragment.len() as u32);
            self.file(id).fragment = Some(at);
            self.fragment.extend_from_slice(&data);
            return Ok(());
        }
        let mut offset = 0;
        while offset < content.len {
            let len = block.min(content.len - offset) as usize;
            let mut data = vec![0; len];
            spool.read_exact_at(&mut data, content.offset + offset)?;
            offset += len as u64;
            let file = self.file(id);
            let index = file.sizes.len();
            file.sizes.push(0);
            // Like mksquashfs, a block of zeros is stored as a hole: size 0, no bytes.
            if is_zero(&data) {
                file.sparse += len as u64;
            } else {
                self.queue(
                    Job {
                        data,
                        target: Target::Block { file: id, index },
                    },
                    w,
                )?;
            }
        }
        Ok(())
    }

    fn file(&mut self, id: NodeId) -> &mut FileData {
        self.files
            .get_mut(&id)
            .expect("files are entered before their blocks are queued")
    }

    fn seal_fragment<W: Write>(&mut self, w: &mut Counting<W>) -> io::Result<()> {
        let data = std::mem::take(&mut self.fragment);
        let index = self.fragments.len() as u32;
        self.fragments.push((0, 0));
        self.queue(
            Job {
                data,
                target: Target::Fragment(index),
            },
            w,
        )
    }

    fn queue<W: Write>(&mut self, job: Job, w: &mut Counting<W>) -> io::Result<()> {
        self.batch_bytes += job.data.len();
        self.batch.push(job);
        if self.batch_bytes >= BATCH_BYTES {
            self.flush(w)
        } else {
            Ok(())
        }
    }

    fn finish<W: Write>(&mut self, w: &mut Counting<W>) -> io::Result<()> {
        if !self.fragment.is_empty() {
            self.seal_fragment(w)?;
        }
        self.flush(w)
    }

    /// Compresses the batch in parallel, then writes it in queue order so the output
    /// does not depend on thread timing.
    fn flush<W: Write>(&mut self, w: &mut Counting<W>) -> io::Result<()> {
        let jobs = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let compressed = compress_all(&jobs, self.level, self.threads)?;
        for (job, block) in jobs.into_iter().zip(compressed) {
            let start = w.pos;
            let size = match block {
                Some(bytes) => {
                    w.write_all(&bytes)?;
                    bytes.len() as u32
                }
                None => {
                    w.write_all(&job.data)?;
                    job.data.len() as u32 | BLOCK_UNCOMPRESSED
                }
            };
            match job.target {
                Target::Block { file, index } => {
                    let file = self.file(file);
                    if !file.started {
                        file.started = true;
                        file.blocks_start = start;
                    }
                    file.sizes[index] = size;
                }
                Target::Fragment(index) => self.fragments[index as usize] = (start, size),
            }
        }
        Ok(())
    }
}

/// Tests 64 bytes at a time so the OR-fold vectorises and the scan still stops early.
pub(crate) fn is_zero(data: &[u8]) -> bool {
    data.chunks(64)
        .all(|c| c.iter().fold(0, |acc, &b| acc | b) == 0)
}

/// Compresses each job's data with zstd on `threads` threads (the caller's included).
/// `None` means "store uncompressed": compression did not make the block smaller.
fn compress_all(jobs: &[Job], level: i32, threads: usize) -> io::Result<Vec<Option<Vec<u8>>>> {
    let next = AtomicUsize::new(0);
    let work = || -> io::Result<Vec<(usize, Option<Vec<u8>>)>> {
        let mut zstd = zstd::bulk::Compressor::new(level)?;
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(job) = jobs.get(i) else {
                return Ok(done);
            };
            let out = zstd.compress(&job.data)?;
            done.push((i, (out.len() < job.data.len()).then_some(out)));
        }
    };
    let parts = std::thread::scope(|s| {
        let helpers: Vec<_> = (1..threads.min(jobs.len()))
            .map(|_| s.spawn(work))
            .collect();
        let mut parts = vec![work()];
        parts.extend(
            helpers
                .into_iter()
                .map(|h| h.join().expect("compression thread panicked")),
        );
        parts
    });
    let mut out: Vec<Option<Vec<u8>>> = vec![None; jobs.len()];
    for part in parts {
        for (i, block) in part? {
            out[i] = block;
        }
    }
    Ok(out)
}

/// A stream of metadata (inodes, directories, table entries) cut into 8 KiB blocks,
/// each compressed on its own.
struct MetadataWriter {
    level: i32,
    out: Vec<u8>,
    pending: Vec<u8>,
}

/// Reference to a place in a metadata stream: (block start, offset in the block).
#[derive(Clone, Copy)]
struct MetaRef {
    block: u64,
    offset: u16,
}

impl MetaRef {
    fn raw(self) -> u64 {
        (self.block << 16) | u64::from(self.offset)
    }
}

impl MetadataWriter {
    fn new(level: i32) -> Self {
        MetadataWriter {
            level,
            out: Vec::new(),
            pending: Vec::new(),
        }
    }

    fn position(&self) -> MetaRef {
        MetaRef {
            block: self.out.len() as u64,
            offset: self.pending.len() as u16,
        }
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.pending.extend_from_slice(bytes);
        while self.pending.len() >= METADATA_SIZE {
            self.seal(METADATA_SIZE)?;
        }
        Ok(())
    }

    fn seal(&mut self, len: usize) -> io::Result<()> {
        let block: Vec<u8> = self.pending.drain(..len).collect();
        let compressed = zstd::bulk::compress(&block, self.level)?;
        let (header, body) = if compressed.len() < block.len() {
            (compressed.len() as u16, &compressed)
        } else {
            (block.len() as u16 | METADATA_UNCOMPRESSED, &block)
        };
        self.out.extend_from_slice(&header.to_le_bytes());
        self.out.extend_from_slice(body);
        Ok(())
    }

    fn finish(&mut self) -> io::Result<Vec<u8>> {
        if !self.pending.is_empty() {
            self.seal(self.pending.len())?;
        }
        Ok(std::mem::take(&mut self.out))
    }
}

/// Writes fixed-size entries as metadata blocks followed by the index of those blocks
/// (absolute u64 positions); returns the index position, which the superblock stores.
fn write_table<W: Write>(w: &mut Counting<W>, entries: &[u8], level: i32) -> io::Result<u64> {
    let mut index = Vec::new();
    for chunk in entries.chunks(METADATA_SIZE) {
        index.push(w.pos);
        let mut meta = MetadataWriter::new(level);
        meta.write(chunk)?;
        w.write_all(&meta.finish()?)?;
    }
    let start = w.pos;
    for pos in index {
        w.write_all(&pos.to_le_bytes())?;
    }
    Ok(start)
}

/// Distinct xattr sets, each stored once and shared by every inode that carries it.
#[derive(Default)]
struct XattrTable {
    sets: Vec<Vec<Xattr>>,
    index: HashMap<Vec<Xattr>, u32>,
}

impl XattrTable {
    fn index_of(&mut self, xattrs: &[Xattr]) -> u32 {
        if xattrs.is_empty() {
            return NO_XATTR;
        }
        if let Some(&i) = self.index.get(xattrs) {
            return i;
        }
        let i = self.sets.len() as u32;
        self.sets.push(xattrs.to_vec());
        self.index.insert(xattrs.to_vec(), i);
        i
    }

    /// Writes pairs, ids and the id index; returns the position of the id table header,
    /// or [`INVALID_TABLE`] when no inode has xattrs.
    fn write<W: Write>(&self, w: &mut Counting<W>, level: i32) -> io::Result<u64> {
        if self.sets.is_empty() {
            return Ok(INVALID_TABLE);
        }
        let mut pairs = MetadataWriter::new(level);
        let mut ids = Vec::with_capacity(self.sets.len() * 16);
        for set in &self.sets {
            let at = pairs.position();
            let mut size = 0u32;
            for x in set {
                let (prefix, name) =
                    split_xattr_name(&x.name).expect("flattening keeps known prefixes");
                pairs.write(&prefix.to_le_bytes())?;
                pairs.write(&(name.len() as u16).to_le_bytes())?;
                pairs.write(name)?;
                pairs.write(&(x.value.len() as u32).to_le_bytes())?;
                pairs.write(&x.value)?;
                size += 8 + name.len() as u32 + x.value.len() as u32;
            }
            ids.extend_from_slice(&at.raw().to_le_bytes());
            ids.extend_from_slice(&(set.len() as u32).to_le_bytes());
            ids.extend_from_slice(&size.to_le_bytes());
        }
        let pairs_start = w.pos;
        w.write_all(&pairs.finish()?)?;
        let mut index = Vec::new();
        for chunk in ids.chunks(METADATA_SIZE) {
            index.push(w.pos);
            let mut meta = MetadataWriter::new(level);
            meta.write(chunk)?;
            w.write_all(&meta.finish()?)?;
        }
        let header = w.pos;
        w.write_all(&pairs_start.to_le_bytes())?;
        w.write_all(&(self.sets.len() as u32).to_le_bytes())?;
        w.write_all(&0u32.to_le_bytes())?;
        for pos in index {
            w.write_all(&pos.to_le_bytes())?;
        }
        Ok(header)
    }
}

/// The squashfs prefix id (user 0, trusted 1, security 2) and the name without it;
/// `None` for prefixes squashfs cannot store.
pub(crate) fn split_xattr_name(name: &[u8]) -> Option<(u16, &[u8])> {
    [
        (b"user.".as_slice(), 0u16),
        (b"trusted.", 1),
        (b"security.", 2),
    ]
    .into_iter()
    .find_map(|(prefix, id)| name.strip_prefix(prefix).map(|rest| (id, rest)))
    .filter(|(_, rest)| !rest.is_empty() && rest.len() <= usize::from(u16::MAX))
}

/// Writes inodes (children before parents, so a directory can point at them) and
/// directory listings.
struct InodeWriter<'a> {
    tree: &'a Tree,
    plan: &'a Plan,
    ids: &'a IdTable,
    files: &'a HashMap<NodeId, FileData>,
    inode_table: MetadataWriter,
    dir_table: MetadataWriter,
    xattrs: XattrTable,
    /// Where each node's inode was written; hardlinks reuse it.
    refs: Vec<Option<MetaRef>>,
}

/// One directory entry, ready to be listed.
struct Listed<'a> {
    name: &'a [u8],
    at: MetaRef,
    ino: u32,
    kind: u16,
}

impl InodeWriter<'_> {
    fn write_dir(&mut self, dir: NodeId, parent_ino: u32) -> io::Result<MetaRef> {
        let tree = self.tree;
        let children = tree.children(dir).expect("write_dir is given directories");
        let mut listed = Vec::with_capacity(children.len());
        for (name, &child) in children {
            let at = match self.refs[child as usize] {
                Some(at) => at,
                None if tree.is_dir(child) => self.write_dir(child, self.plan.ino[dir as usize])?,
                None => self.write_leaf(child)?,
            };
            self.refs[child as usize] = Some(at);
            listed.push(Listed {
                name,
                at,
                ino: self.plan.ino[child as usize],
                kind: basic_type(&tree.node(child).kind),
            });
        }

        let listing_at = self.dir_table.position();
        let listing_len = self.write_listing(&listed)?;
        let meta = &tree.node(dir).meta;
        let xattr = self.xattrs.index_of(&meta.xattrs);
        let nlink = self.plan.nlink[dir as usize];
        let size = listing_len + 3;
        let at = self.inode_table.position();
        let block = u32::try_from(listing_at.block).map_err(|_| too_big("directory table"))?;
        if xattr == NO_XATTR && size <= u32::from(u16::MAX) {
            let mut b = self.header(DIR, dir);
            put(&mut b, &block.to_le_bytes());
            put(&mut b, &nlink.to_le_bytes());
            put(&mut b, &(size as u16).to_le_bytes());
            put(&mut b, &listing_at.offset.to_le_bytes());
            put(&mut b, &parent_ino.to_le_bytes());
            self.inode_table.write(&b)?;
        } else {
            let mut b = self.header(DIR + EXTENDED, dir);
            put(&mut b, &nlink.to_le_bytes());
            put(&mut b, &size.to_le_bytes());
            put(&mut b, &block.to_le_bytes());
            put(&mut b, &parent_ino.to_le_bytes());
            put(&mut b, &0u16.to_le_bytes()); // no directory index: lookups scan the listing
            put(&mut b, &listing_at.offset.to_le_bytes());
            put(&mut b, &xattr.to_le_bytes());
            self.inode_table.write(&b)?;
        }
        Ok(at)
    }

    /// Entries go in runs under a header; a run shares one inode metadata block and keeps
    /// inode numbers within a 16-bit delta of the header's, at most 256 entries.
    fn write_listing(&mut self, listed: &[Listed]) -> io::Result<u32> {
        let mut len = 0u32;
        let mut rest = listed;
        while let Some(first) = rest.first() {
            let run = rest
                .iter()
                .take(256)
                .take_while(|e| {
                    e.at.block == first.at.block
                        && i16::try_from(i64::from(e.ino) - i64::from(first.ino)).is_ok()
                })
                .count();
            let mut b = Vec::new();
            put(&mut b, &(run as u32 - 1).to_le_bytes());
            put(
                &mut b,
                &u32::try_from(first.at.block)
                    .map_err(|_| too_big("inode table"))?
                    .to_le_bytes(),
            );
            put(&mut b, &first.ino.to_le_bytes());
            for e in &rest[..run] {
                put(&mut b, &e.at.offset.to_le_bytes());
                put(
                    &mut b,
                    &((i64::from(e.ino) - i64::from(first.ino)) as i16).to_le_bytes(),
                );
                put(&mut b, &e.kind.to_le_bytes());
                put(&mut b, &(e.name.len() as u16 - 1).to_le_bytes());
                put(&mut b, e.name);
            }
            len += b.len() as u32;
            self.dir_table.write(&b)?;
            rest = &rest[run..];
        }
        Ok(len)
    }

    fn write_leaf(&mut self, id: NodeId) -> io::Result<MetaRef> {
        let node = self.tree.node(id);
        let xattr = self.xattrs.index_of(&node.meta.xattrs);
        let nlink = self.plan.nlink[id as usize];
        let ext = xattr != NO_XATTR;
        let at = self.inode_table.position();
        let mut b;
        match &node.kind {
            Kind::File(content) => {
                let file = &self.files[&id];
                let (frag, frag_offset) = file.fragment.unwrap_or((NO_FRAGMENT, 0));
                // A basic inode has no link count, xattr or sparse field, and 32-bit sizes.
                let basic = (u32::try_from(file.blocks_start), u32::try_from(content.len));
                if let (Ok(start), Ok(size)) = basic
                    && !ext
                    && nlink == 1
                    && file.sparse == 0
                {
                    b = self.header(FILE, id);
                    put(&mut b, &start.to_le_bytes());
                    put(&mut b, &frag.to_le_bytes());
                    put(&mut b, &frag_offset.to_le_bytes());
                    put(&mut b, &size.to_le_bytes());
                } else {
                    b = self.header(FILE + EXTENDED, id);
                    put(&mut b, &file.blocks_start.to_le_bytes());
                    put(&mut b, &content.len.to_le_bytes());
                    put(&mut b, &file.sparse.to_le_bytes());
                    put(&mut b, &nlink.to_le_bytes());
                    put(&mut b, &frag.to_le_bytes());
                    put(&mut b, &frag_offset.to_le_bytes());
                    put(&mut b, &xattr.to_le_bytes());
                }
                for size in &file.sizes {
                    put(&mut b, &size.to_le_bytes());
                }
            }
            Kind::Symlink(target) => {
                b = self.header(if ext { SYMLINK + EXTENDED } else { SYMLINK }, id);
                put(&mut b, &nlink.to_le_bytes());
                put(&mut b, &(target.len() as u32).to_le_bytes());
                put(&mut b, target);
                if ext {
                    put(&mut b, &xattr.to_le_bytes());
                }
            }
            Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } => {
                let basic = basic_type(&node.kind);
                b = self.header(if ext { basic + EXTENDED } else { basic }, id);
                put(&mut b, &nlink.to_le_bytes());
                put(&mut b, &encode_dev(*major, *minor).to_le_bytes());
                if ext {
                    put(&mut b, &xattr.to_le_bytes());
                }
            }
            Kind::Fifo => {
                b = self.header(if ext { FIFO + EXTENDED } else { FIFO }, id);
                put(&mut b, &nlink.to_le_bytes());
                if ext {
                    put(&mut b, &xattr.to_le_bytes());
                }
            }
            Kind::Dir(_) => unreachable!("directories go through write_dir"),
        }
        self.inode_table.write(&b)?;
        Ok(at)
    }

    /// The 16-byte header every inode starts with.
    fn header(&self, kind: u16, id: NodeId) -> Vec<u8> {
        let meta: &Meta = &self.tree.node(id).meta;
        let mut b = Vec::with_capacity(64);
        put(&mut b, &kind.to_le_bytes());
        put(&mut b, &(meta.mode & 0o7777).to_le_bytes());
        put(&mut b, &self.ids.get(meta.uid).to_le_bytes());
        put(&mut b, &self.ids.get(meta.gid).to_le_bytes());
        put(&mut b, &meta.mtime.to_le_bytes());
        put(&mut b, &self.plan.ino[id as usize].to_le_bytes());
        b
    }
}

fn put(b: &mut Vec<u8>, bytes: &[u8]) {
    b.extend_from_slice(bytes);
}

fn too_big(what: &str) -> io::Error {
    io::Error::other(format!("{what} is larger than squashfs can address"))
}

fn basic_type(kind: &Kind) -> u16 {
    match kind {
        Kind::Dir(_) => DIR,
        Kind::File(_) => FILE,
        Kind::Symlink(_) => SYMLINK,
        Kind::BlockDev { .. } => BLOCK_DEV,
        Kind::CharDev { .. } => CHAR_DEV,
        Kind::Fifo => FIFO,
    }
}

/// The kernel's `new_encode_dev`: 12-bit major, 20-bit minor.
fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

#[derive(Default)]
struct SuperBlock {
    inodes: u32,
    fragments: u32,
    flags: u16,
    id_count: u16,
    root_inode: u64,
    bytes_used: u64,
    id_table: u64,
    xattr_table: u64,
    inode_table: u64,
    dir_table: u64,
    fragment_table: u64,
}

impl SuperBlock {
    fn encode(&self) -> [u8; SUPERBLOCK_LEN] {
        let mut b = Vec::with_capacity(SUPERBLOCK_LEN);
        put(&mut b, &MAGIC.to_le_bytes());
        put(&mut b, &self.inodes.to_le_bytes());
        put(&mut b, &0u32.to_le_bytes()); // creation time: fixed for reproducible images
        put(&mut b, &BLOCK_SIZE.to_le_bytes());
        put(&mut b, &self.fragments.to_le_bytes());
        put(&mut b, &COMPRESSOR_ZSTD.to_le_bytes());
        put(&mut b, &BLOCK_LOG.to_le_bytes());
        put(&mut b, &self.flags.to_le_bytes());
        put(&mut b, &self.id_count.to_le_bytes());
        put(&mut b, &4u16.to_le_bytes());
        put(&mut b, &0u16.to_le_bytes());
        put(&mut b, &self.root_inode.to_le_bytes());
        put(&mut b, &self.bytes_used.to_le_bytes());
        put(&mut b, &self.id_table.to_le_bytes());
        put(&mut b, &self.xattr_table.to_le_bytes());
        put(&mut b, &self.inode_table.to_le_bytes());
        put(&mut b, &self.dir_table.to_le_bytes());
        put(&mut b, &self.fragment_table.to_le_bytes());
        put(&mut b, &INVALID_TABLE.to_le_bytes()); // no export table: the image is not NFS-exported
        b.try_into().expect("superblock is 96 bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's `new_decode_dev`, which reads what we write.
    fn kernel_decode(dev: u32) -> (u32, u32) {
        ((dev & 0xfff00) >> 8, (dev & 0xff) | ((dev >> 12) & 0xfff00))
    }

    #[test]
    fn device_numbers_use_the_kernel_encoding() {
        for (major, minor) in [
            (1, 3),
            (8, 0x12345),
            (259, 65536),
            (4095, 1_048_575),
            (0, 0),
        ] {
            assert_eq!(kernel_decode(encode_dev(major, minor)), (major, minor));
        }
        assert_eq!(encode_dev(1, 3), 0x103);
        // Low 8 minor bits, then 12 major bits, then the high minor bits.
        assert_eq!(encode_dev(8, 0x12345), 0x1230_0845);
        assert_eq!(encode_dev(0xfff, 0xff), 0xfffff);
    }

    #[test]
    fn only_known_xattr_prefixes_are_stored() {
        assert_eq!(
            split_xattr_name(b"security.capability"),
            Some((2, &b"capability"[..]))
        );
        assert_eq!(split_xattr_name(b"user.x"), Some((0, &b"x"[..])));
        assert_eq!(
            split_xattr_name(b"trusted.overlay.opaque"),
            Some((1, &b"overlay.opaque"[..]))
        );
        assert_eq!(split_xattr_name(b"system.posix_acl_access"), None);
        assert_eq!(split_xattr_name(b"user."), None);
    }

    #[test]
    fn zero_detection_sees_a_single_set_byte() {
        let mut block = vec![0u8; 4099];
        assert!(is_zero(&block));
        block[4098] = 1;
        assert!(!is_zero(&block));
        block[4098] = 0;
        block[3] = 1;
        assert!(!is_zero(&block));
    }
}
