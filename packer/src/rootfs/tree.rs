//! The flattened filesystem: an arena of inodes reachable from a root directory.
//!
//! Directory entries point at inode ids, so two names can share one inode (a hardlink).
//! Nodes that are removed by whiteouts stay in the arena unreferenced; only what is
//! reachable from [`ROOT`] ends up in the image.

use std::collections::BTreeMap;

/// Index of a node in [`Tree::nodes`].
pub(crate) type NodeId = u32;

/// The root directory is always the first node.
pub(crate) const ROOT: NodeId = 0;

/// One extended attribute, with its full name (`security.capability`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

/// Ownership, permissions and times of an inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Meta {
    /// Permission bits including setuid, setgid and sticky (`0o7777`).
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u32,
    /// Sorted by name, so equal sets compare equal.
    pub xattrs: Vec<Xattr>,
}

impl Meta {
    /// Metadata of a directory that no layer describes (an implied parent, the root).
    /// Fixed values keep the image independent of the host's uid and umask.
    pub(crate) fn implied_dir() -> Self {
        Meta {
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: Vec::new(),
        }
    }
}

/// Where a regular file's bytes are in the scratch file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Content {
    pub offset: u64,
    pub len: u64,
}

/// What an inode is.
#[derive(Debug)]
pub(crate) enum Kind {
    Dir(BTreeMap<Box<[u8]>, NodeId>),
    File(Content),
    /// The target is kept byte for byte; the guest resolves it.
    Symlink(Box<[u8]>),
    CharDev {
        major: u32,
        minor: u32,
    },
    BlockDev {
        major: u32,
        minor: u32,
    },
    Fifo,
}

#[derive(Debug)]
pub(crate) struct Node {
    pub meta: Meta,
    pub kind: Kind,
}

/// The flattened image.
#[derive(Debug)]
pub(crate) struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    pub(crate) fn new() -> Self {
        Tree {
            nodes: vec![Node {
                meta: Meta::implied_dir(),
                kind: Kind::Dir(BTreeMap::new()),
            }],
        }
    }

    pub(crate) fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }

    pub(crate) fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id as usize]
    }

    pub(crate) fn push(&mut self, node: Node) -> NodeId {
        let id = NodeId::try_from(self.nodes.len()).expect("entry limit keeps ids below u32::MAX");
        self.nodes.push(node);
        id
    }

    pub(crate) fn is_dir(&self, id: NodeId) -> bool {
        matches!(self.node(id).kind, Kind::Dir(_))
    }

    /// Children of a directory; empty for anything else.
    pub(crate) fn children(&self, id: NodeId) -> Option<&BTreeMap<Box<[u8]>, NodeId>> {
        match &self.node(id).kind {
            Kind::Dir(children) => Some(children),
            _ => None,
        }
    }

    pub(crate) fn children_mut(&mut self, id: NodeId) -> &mut BTreeMap<Box<[u8]>, NodeId> {
        match &mut self.node_mut(id).kind {
            Kind::Dir(children) => children,
            _ => unreachable!("callers only pass directories"),
        }
    }
}
