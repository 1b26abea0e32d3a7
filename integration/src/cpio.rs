//! A writer for the "newc" cpio format the kernel unpacks as an initramfs.
//!
//! Entries are written in the order given, with inode numbers counting up
//! from 1, owner root and mtime 0, so equal input gives equal bytes.

/// File type bits of `st_mode`.
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// One archive member's kind and contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory with its permission bits.
    Dir {
        /// Permission bits, e.g. `0o755`.
        mode: u32,
    },
    /// A regular file.
    File {
        /// Permission bits, e.g. `0o644`.
        mode: u32,
        /// The contents.
        data: Vec<u8>,
    },
    /// A symbolic link to `target`.
    Symlink {
        /// Where the link points.
        target: String,
    },
    /// A character device node, e.g. `/dev/console` (5, 1).
    CharDev {
        /// Permission bits.
        mode: u32,
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
}

/// Builds a newc archive in memory.
#[derive(Debug, Default)]
pub struct Writer {
    out: Vec<u8>,
    next_ino: u32,
}

impl Writer {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `node` under `name` (relative, no leading `/`, e.g. `bin/sh`).
    ///
    /// # Panics
    /// If a member is 4 GiB or larger, which newc cannot describe.
    pub fn add(&mut self, name: &str, node: &Node) {
        self.next_ino += 1;
        let (mode, nlink, data, rdev): (u32, u32, &[u8], _) = match node {
            Node::Dir { mode } => (S_IFDIR | (mode & 0o7777), 2, &[], (0, 0)),
            Node::File { mode, data } => (S_IFREG | (mode & 0o7777), 1, data, (0, 0)),
            Node::Symlink { target } => (S_IFLNK | 0o777, 1, target.as_bytes(), (0, 0)),
            Node::CharDev { mode, major, minor } => {
                (S_IFCHR | (mode & 0o7777), 1, &[], (*major, *minor))
            }
        };
        let size = u32::try_from(data.len()).expect("cpio member below 4 GiB");
        self.header(self.next_ino, mode, nlink, size, rdev, name);
        self.out.extend_from_slice(data);
        self.pad();
    }

    /// Writes the trailer and returns the archive.
    pub fn finish(mut self) -> Vec<u8> {
        self.header(0, 0, 1, 0, (0, 0), "TRAILER!!!");
        // The kernel does not need it, but cpio(1) pads to 512 bytes.
        while !self.out.len().is_multiple_of(512) {
            self.out.push(0);
        }
        self.out
    }

    fn header(&mut self, ino: u32, mode: u32, nlink: u32, size: u32, rdev: (u32, u32), name: &str) {
        let namesize = u32::try_from(name.len() + 1).expect("short cpio name");
        // ino mode uid gid nlink mtime filesize devmajor devminor
        // rdevmajor rdevminor namesize check
        let (rmajor, rminor) = rdev;
        let fields = [
            ino, mode, 0, 0, nlink, 0, size, 0, 0, rmajor, rminor, namesize, 0,
        ];
        self.out.extend_from_slice(b"070701");
        for field in fields {
            self.out
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_file_layout() {
        let mut w = Writer::new();
        w.add(
            "a",
            &Node::File {
                mode: 0o644,
                data: b"xyz".to_vec(),
            },
        );
        let out = w.finish();
        // Header: magic + 13 fields of 8 hex digits.
        assert_eq!(&out[..6], b"070701");
        assert_eq!(&out[6..14], b"00000001"); // ino
        assert_eq!(&out[14..22], b"000081a4"); // S_IFREG | 0644
        assert_eq!(&out[54..62], b"00000003"); // filesize
        assert_eq!(&out[94..102], b"00000002"); // namesize "a\0"
                                                // 110-byte header + "a\0" = 112, already aligned; then the data.
        assert_eq!(&out[110..112], b"a\0");
        assert_eq!(&out[112..115], b"xyz");
        assert_eq!(out[115], 0);
        // The trailer follows at the next multiple of 4.
        assert_eq!(&out[116..122], b"070701");
        assert_eq!(&out[116 + 110..116 + 120], b"TRAILER!!!");
        assert_eq!(out.len() % 512, 0);
    }

    #[test]
    fn symlink_and_dir_modes() {
        let mut w = Writer::new();
        w.add("d", &Node::Dir { mode: 0o755 });
        w.add(
            "d/l",
            &Node::Symlink {
                target: "/bin/busybox".into(),
            },
        );
        let out = w.finish();
        assert_eq!(&out[14..22], b"000041ed");
        let second = 112; // 110 + "d\0" padded to 112
        assert_eq!(&out[second + 14..second + 22], b"0000a1ff");
        assert_eq!(&out[second + 54..second + 62], b"0000000c");
    }
}
