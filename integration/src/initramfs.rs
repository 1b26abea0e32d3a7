//! The guest's initramfs: busybox-static and its applet links, kernel modules
//! in load order, host binaries with the libraries `ldd` lists, and a
//! generated `/init` that runs the test script QEMU passes in through fw_cfg.
//!
//! The archive is built in memory and stored as
//! `<cache>/initramfs/initramfs-<hash of its bytes>.cpio`; a process builds a
//! given spec once and every later run (and every later process with the same
//! spec and the same host files) reuses the file. The script is not part of
//! the archive, so every test with the same spec shares one initramfs.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use crate::cpio::{Node, Writer};
use crate::error::{io, Error, Result};
use crate::kernel::write_atomically;
use crate::GuestEnv;

/// Modules every initramfs gets: fw_cfg carries the test script in.
pub const BASE_MODULES: &[&str] = &["qemu_fw_cfg"];

/// Modules of [`Initramfs::standard`]: virtio over PCI, virtio-scsi with the
/// SCSI disk and generic drivers, virtio-blk, virtio-net (for a guest that
/// reaches a target on the host through QEMU's user network), and the
/// kernel's iSCSI initiator over TCP with CRC32C for digests (`crc32c` is a
/// softdep by alias, which the load order does not resolve: the provider is
/// named).
pub const STANDARD_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_scsi",
    "sd_mod",
    "sg",
    "virtio_blk",
    "virtio_net",
    "crc32c_generic",
    "scsi_transport_iscsi",
    "libiscsi",
    "libiscsi_tcp",
    "iscsi_tcp",
];

/// open-iscsi's daemon, from the host's open-iscsi package (install-deps.sh).
pub const ISCSID: &str = "/usr/sbin/iscsid";

/// open-iscsi's admin tool, from the same package.
pub const ISCSIADM: &str = "/usr/sbin/iscsiadm";

/// What [`Initramfs::standard`] carries of open-iscsi, with the libraries,
/// when the host has it; at the same paths in the guest.
pub const OPEN_ISCSI_BINARIES: &[&str] = &[ISCSID, ISCSIADM];

/// sg3-utils' `sg_reset`: has the kernel's SCSI error handler send a LOGICAL
/// UNIT RESET or TARGET RESET through the LLD (an iSCSI TMF). In
/// [`Initramfs::standard`] when the host has it.
pub const SG_RESET: &str = "/usr/bin/sg_reset";

/// The guest's iSCSI initiator name (`/etc/iscsi/initiatorname.iscsi`).
pub const GUEST_INITIATOR_NAME: &str = "iqn.2026-11.org.oxtarget:guest";

/// Where the guest's iscsid.conf lives.
pub const GUEST_ISCSID_CONF: &str = "/etc/iscsi/iscsid.conf";

/// The guest's iscsid.conf: node defaults that keep a failing login short
/// (one attempt, short timeouts) so a test that expects a refusal ends
/// quickly, and the target's unsolicited-data defaults. A test changes a
/// node's settings with `iscsiadm -m node ... -o update`.
pub const GUEST_ISCSID_CONF_TEXT: &str = "\
# Written by oxtarget's guest harness (integration/src/initramfs.rs).
node.startup = manual
node.session.initial_login_retry_max = 1
node.conn[0].timeo.login_timeout = 10
node.conn[0].timeo.logout_timeout = 10
node.conn[0].timeo.noop_out_interval = 5
node.conn[0].timeo.noop_out_timeout = 10
node.session.timeo.replacement_timeout = 20
node.session.err_timeo.abort_timeout = 15
node.session.err_timeo.lu_reset_timeout = 20
node.session.err_timeo.tgt_reset_timeout = 20
node.session.err_timeo.host_reset_timeout = 30
node.session.cmds_max = 128
node.session.queue_depth = 32
node.session.iscsi.InitialR2T = No
node.session.iscsi.ImmediateData = Yes
node.session.iscsi.FirstBurstLength = 262144
node.session.iscsi.MaxBurstLength = 16776192
node.conn[0].iscsi.MaxRecvDataSegmentLength = 262144
node.conn[0].iscsi.MaxXmitDataSegmentLength = 0
discovery.sendtargets.iscsi.MaxRecvDataSegmentLength = 32768
node.session.nr_sessions = 1
node.session.scan = auto
";

/// Whether the host has open-iscsi's binaries ([`OPEN_ISCSI_BINARIES`]).
pub fn host_has_open_iscsi() -> bool {
    OPEN_ISCSI_BINARIES.iter().all(|p| Path::new(p).is_file())
}

/// The guest port (second serial port) the script's stdout goes to.
pub const RESULTS_TTY: &str = "/dev/ttyS1";

/// Line the guest's /init writes after the script: `OXTARGET-EXIT <status>`.
pub const EXIT_MARKER: &str = "OXTARGET-EXIT";

/// Line /init writes per module that failed to load.
pub const INSMOD_FAILED_MARKER: &str = "OXTARGET-INSMOD-FAILED";

/// Where /init puts the fw_cfg files `opt/oxtarget/<name>` in the guest.
pub const GUEST_INPUT_DIR: &str = "/oxtarget/in";

/// What goes into an initramfs besides busybox and /init.
#[derive(Debug, Clone, Default, Hash)]
pub struct Initramfs {
    modules: Vec<String>,
    extras: Vec<Extra>,
}

#[derive(Debug, Clone, Hash)]
enum Extra {
    /// A host file copied to a guest path, optionally with its libraries.
    Host {
        host: PathBuf,
        guest: String,
        with_libs: bool,
    },
    /// Literal contents.
    Bytes {
        guest: String,
        data: Vec<u8>,
        mode: u32,
    },
    /// A symbolic link.
    Symlink { guest: String, target: String },
    /// A host directory tree copied verbatim.
    Tree { host: PathBuf, guest: String },
}

impl Initramfs {
    /// Busybox, /init and [`BASE_MODULES`] only.
    pub fn new() -> Self {
        Self::default()
    }

    /// [`STANDARD_MODULES`]: what a guest needs for QEMU's virtio-scsi and
    /// virtio-blk disks, virtio-net, and the kernel's iSCSI initiator; and,
    /// when the host has them, open-iscsi's iscsid and iscsiadm with their
    /// libraries, [`GUEST_ISCSID_CONF_TEXT`] and the initiator name
    /// [`GUEST_INITIATOR_NAME`], and [`SG_RESET`]. Every guest test uses
    /// this one archive (one build per run); the iSCSI userland's 14 MiB
    /// cost no measurable boot time under TCG.
    pub fn standard() -> Self {
        let mut me = Self::new().modules(STANDARD_MODULES);
        if host_has_open_iscsi() {
            for binary in OPEN_ISCSI_BINARIES {
                me = me.binary(binary);
            }
            me = me
                .bytes(GUEST_ISCSID_CONF, GUEST_ISCSID_CONF_TEXT, 0o644)
                .bytes(
                    "/etc/iscsi/initiatorname.iscsi",
                    format!("InitiatorName={GUEST_INITIATOR_NAME}\n"),
                    0o644,
                );
        }
        if Path::new(SG_RESET).is_file() {
            me = me.binary(SG_RESET);
        }
        me
    }

    /// Adds kernel modules by name (`-` or `_`); their dependencies follow.
    pub fn modules<S: AsRef<str>>(mut self, names: &[S]) -> Self {
        self.modules
            .extend(names.iter().map(|n| n.as_ref().to_string()));
        self
    }

    /// Adds a host executable at the same path in the guest, with every
    /// library `ldd` lists for it (at the paths ldd prints).
    pub fn binary(self, host: impl AsRef<Path>) -> Self {
        let host = host.as_ref();
        let guest = host.to_string_lossy().into_owned();
        self.binary_at(host, guest)
    }

    /// Adds a host executable at `guest`, with its libraries.
    pub fn binary_at(mut self, host: impl AsRef<Path>, guest: impl Into<String>) -> Self {
        self.extras.push(Extra::Host {
            host: host.as_ref().to_path_buf(),
            guest: guest.into(),
            with_libs: true,
        });
        self
    }

    /// Adds a host file (contents and permission bits) at `guest`, without
    /// libraries: data files, `dlopen`ed plugins, config files.
    pub fn file(mut self, host: impl AsRef<Path>, guest: impl Into<String>) -> Self {
        self.extras.push(Extra::Host {
            host: host.as_ref().to_path_buf(),
            guest: guest.into(),
            with_libs: false,
        });
        self
    }

    /// Adds a file with the given contents and permission bits.
    pub fn bytes(mut self, guest: impl Into<String>, data: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.extras.push(Extra::Bytes {
            guest: guest.into(),
            data: data.into(),
            mode,
        });
        self
    }

    /// Adds a symbolic link at `guest` pointing to `target`.
    pub fn symlink(mut self, guest: impl Into<String>, target: impl Into<String>) -> Self {
        self.extras.push(Extra::Symlink {
            guest: guest.into(),
            target: target.into(),
        });
        self
    }

    /// Copies a host directory tree (files, directories, symlinks) to `guest`.
    pub fn tree(mut self, host: impl AsRef<Path>, guest: impl Into<String>) -> Self {
        self.extras.push(Extra::Tree {
            host: host.as_ref().to_path_buf(),
            guest: guest.into(),
        });
        self
    }

    /// Builds the archive (once per process and spec) and returns its path
    /// in the cache.
    pub fn build(&self, env: &GuestEnv) -> Result<PathBuf> {
        static BUILT: OnceLock<Mutex<HashMap<u64, PathBuf>>> = OnceLock::new();
        let mut hasher = DefaultHasher::new();
        self.hash(&mut hasher);
        env.kernel.release.hash(&mut hasher);
        env.busybox.hash(&mut hasher);
        let key = hasher.finish();
        // One build at a time: parallel tests wait for the first one.
        let mut built = BUILT
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(path) = built.get(&key) {
            if path.is_file() {
                return Ok(path.clone());
            }
        }
        let archive = self.archive(env)?;
        let dir = env.cache.join("initramfs");
        fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        let path = dir.join(format!("initramfs-{:016x}.cpio", fnv1a64(&archive)));
        if !path.is_file() {
            write_atomically(&path, &archive)?;
        }
        built.insert(key, path.clone());
        Ok(path)
    }

    /// The archive's bytes.
    fn archive(&self, env: &GuestEnv) -> Result<Vec<u8>> {
        let mut tree = Tree::default();
        for dir in [
            "/bin",
            "/sbin",
            "/usr/bin",
            "/usr/sbin",
            "/etc",
            "/proc",
            "/sys",
            "/dev",
            "/tmp",
            "/run",
            "/root",
            "/var",
            "/mnt",
        ] {
            tree.insert(dir, Node::Dir { mode: 0o755 })?;
        }
        tree.insert(
            "/dev/console",
            Node::CharDev {
                mode: 0o600,
                major: 5,
                minor: 1,
            },
        )?;

        // A root user: tools that look their caller up by uid (iscsid refuses
        // an iscsiadm whose uid has no name) find one.
        tree.insert(
            "/etc/passwd",
            Node::File {
                mode: 0o644,
                data: b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
            },
        )?;
        tree.insert(
            "/etc/group",
            Node::File {
                mode: 0o644,
                data: b"root:x:0:\n".to_vec(),
            },
        )?;

        // Busybox and one link per applet.
        tree.add_binary(&env.busybox, "/bin/busybox")?;
        for applet in busybox_applets(&env.busybox)? {
            if applet != "bin/busybox" {
                tree.insert(
                    &format!("/{applet}"),
                    Node::Symlink {
                        target: "/bin/busybox".into(),
                    },
                )?;
            }
        }

        // Modules in load order, at their place under /lib/modules.
        let mut wanted: Vec<String> = BASE_MODULES.iter().map(|s| s.to_string()).collect();
        wanted.extend(self.modules.iter().cloned());
        let order = env.kernel.load_order(&wanted)?;
        let mut list = String::new();
        for module in &order {
            let guest = Path::new("/lib/modules")
                .join(&env.kernel.release)
                .join(&module.rel_path);
            let guest = guest.to_string_lossy().into_owned();
            tree.add_host_file(&module.path, &guest)?;
            list.push_str(&format!("{} {}\n", module.name, guest));
        }
        tree.insert(
            "/etc/oxtarget/modules",
            Node::File {
                mode: 0o644,
                data: list.into_bytes(),
            },
        )?;

        self.add_extras(&mut tree)?;

        tree.insert(
            "/init",
            Node::File {
                mode: 0o755,
                data: init_script().into_bytes(),
            },
        )?;

        let mut writer = Writer::new();
        for (path, node) in &tree.nodes {
            writer.add(&path.to_string_lossy(), node);
        }
        Ok(writer.finish())
    }
}

impl Initramfs {
    /// An archive of this spec's extras only (binaries with their
    /// libraries, files, links, trees; no busybox, /init or modules), to be
    /// unpacked over a full archive: the kernel unpacks concatenated
    /// archives in order, later files replacing earlier ones. See
    /// [`crate::GuestConfig::overlay`].
    pub fn overlay_archive(&self) -> Result<Vec<u8>> {
        let mut tree = Tree::default();
        self.add_extras(&mut tree)?;
        let mut writer = Writer::new();
        for (path, node) in &tree.nodes {
            writer.add(&path.to_string_lossy(), node);
        }
        Ok(writer.finish())
    }

    fn add_extras(&self, tree: &mut Tree) -> Result<()> {
        for extra in &self.extras {
            match extra {
                Extra::Host {
                    host,
                    guest,
                    with_libs: true,
                } => tree.add_binary(host, guest)?,
                Extra::Host { host, guest, .. } => tree.add_host_file(host, guest)?,
                Extra::Bytes { guest, data, mode } => tree.insert(
                    guest,
                    Node::File {
                        mode: *mode,
                        data: data.clone(),
                    },
                )?,
                Extra::Symlink { guest, target } => tree.insert(
                    guest,
                    Node::Symlink {
                        target: target.clone(),
                    },
                )?,
                Extra::Tree { host, guest } => tree.add_host_tree(host, guest)?,
            }
        }
        Ok(())
    }
}

/// The archive's members by relative path; parents are added as directories.
/// Later insertions replace earlier ones (an extra file may shadow an applet).
#[derive(Default)]
struct Tree {
    nodes: BTreeMap<PathBuf, Node>,
}

impl Tree {
    fn insert(&mut self, guest: &str, node: Node) -> Result<()> {
        let rel = relative(guest)?;
        let mut parent = rel.parent();
        while let Some(dir) = parent.filter(|p| !p.as_os_str().is_empty()) {
            self.nodes
                .entry(dir.to_path_buf())
                .or_insert(Node::Dir { mode: 0o755 });
            parent = dir.parent();
        }
        self.nodes.insert(rel, node);
        Ok(())
    }

    /// A host file's contents (symlinks followed) and permission bits.
    fn add_host_file(&mut self, host: &Path, guest: &str) -> Result<()> {
        let data = fs::read(host).map_err(io(format!("read {}", host.display())))?;
        let meta = fs::metadata(host).map_err(io(format!("stat {}", host.display())))?;
        self.insert(
            guest,
            Node::File {
                mode: meta.permissions().mode() & 0o7777,
                data,
            },
        )
    }

    /// A host executable and the libraries `ldd` lists for it.
    fn add_binary(&mut self, host: &Path, guest: &str) -> Result<()> {
        self.add_host_file(host, guest)?;
        for lib in ldd(host)? {
            let guest_lib = lib.to_string_lossy().into_owned();
            self.add_host_file(&lib, &guest_lib)?;
        }
        Ok(())
    }

    fn add_host_tree(&mut self, host: &Path, guest: &str) -> Result<()> {
        let meta = fs::symlink_metadata(host).map_err(io(format!("stat {}", host.display())))?;
        if meta.file_type().is_symlink() {
            let target = fs::read_link(host).map_err(io(format!("readlink {}", host.display())))?;
            return self.insert(
                guest,
                Node::Symlink {
                    target: target.to_string_lossy().into_owned(),
                },
            );
        }
        if !meta.is_dir() {
            return self.add_host_file(host, guest);
        }
        self.insert(
            guest,
            Node::Dir {
                mode: meta.permissions().mode() & 0o7777,
            },
        )?;
        let entries =
            fs::read_dir(host).map_err(io(format!("read directory {}", host.display())))?;
        for entry in entries {
            let entry = entry.map_err(io(format!("read directory {}", host.display())))?;
            let name = entry.file_name();
            let child = format!("{}/{}", guest.trim_end_matches('/'), name.to_string_lossy());
            self.add_host_tree(&entry.path(), &child)?;
        }
        Ok(())
    }
}

/// `/usr/bin/fio` -> `usr/bin/fio`, refusing relative paths and `..`.
fn relative(guest: &str) -> Result<PathBuf> {
    let path = Path::new(guest);
    let mut rel = PathBuf::new();
    let mut components = path.components();
    if components.next() != Some(Component::RootDir) {
        return Err(Error::BadGuestPath(guest.to_string()));
    }
    for c in components {
        match c {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            _ => return Err(Error::BadGuestPath(guest.to_string())),
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(Error::BadGuestPath(guest.to_string()));
    }
    Ok(rel)
}

/// The applets' install paths, relative (`bin/sh`, `usr/bin/md5sum`, ...).
fn busybox_applets(busybox: &Path) -> Result<Vec<String>> {
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(io(format!("run {} --list-full", busybox.display())))?;
    if !out.status.success() {
        return Err(Error::Io {
            context: format!("{} --list-full", busybox.display()),
            source: std::io::Error::other(format!("exit status {}", out.status)),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

/// The libraries (and the dynamic loader) `ldd` lists for `binary`; none for
/// a static binary.
pub fn ldd(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(io(format!("run ldd {}", binary.display())))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stdout.contains("not a dynamic executable") || stderr.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    if !out.status.success() {
        return Err(Error::Ldd {
            path: binary.to_path_buf(),
            detail: format!("{}: {}", out.status, stderr.trim()),
        });
    }
    parse_ldd(&stdout).map_err(|detail| Error::Ldd {
        path: binary.to_path_buf(),
        detail,
    })
}

fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(format!("library {} not found", name.trim()));
                }
                rest.split_whitespace().next().unwrap_or("")
            }
            None => line.split_whitespace().next().unwrap_or(""),
        };
        // linux-vdso.so.1 has no file ("=> (0x...)" or no "=>" at all).
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// FNV-1a, 64 bits: the cache key of an archive's bytes.
fn fnv1a64(data: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The guest's /init.
fn init_script() -> String {
    format!(
        r#"#!/bin/sh
# Generated by oxtarget's guest harness (integration/src/initramfs.rs).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mkdir -p /run/lock
results={results}
stty -F $results raw -echo
failed=
while read -r name file; do
    insmod "$file" || failed="$failed $name"
done </etc/oxtarget/modules
for name in $failed; do
    echo "{insmod_failed} $name" >$results
done
input={input}
mkdir -p $input
fw=/sys/firmware/qemu_fw_cfg/by_name/opt/oxtarget
for entry in $fw/*; do
    [ -e "$entry/raw" ] && cat "$entry/raw" >"$input/${{entry##*/}}"
done
export OXTARGET_IN=$input
if [ -f $input/script ]; then
    echo "oxtarget-init: running the test script"
    (cd /tmp && exec sh $input/script) >$results 2>/dev/console </dev/null
    status=$?
else
    echo "oxtarget-init: no test script in $fw"
    status=127
fi
echo "{exit} $status" >$results
echo "oxtarget-init: script exited with status $status, powering off"
sync
poweroff -f
"#,
        results = RESULTS_TTY,
        insmod_failed = INSMOD_FAILED_MARKER,
        input = GUEST_INPUT_DIR,
        exit = EXIT_MARKER,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }

    #[test]
    fn guest_paths() {
        assert_eq!(
            relative("/usr/bin/fio").unwrap(),
            PathBuf::from("usr/bin/fio")
        );
        assert!(relative("usr/bin/fio").is_err());
        assert!(relative("/usr/../etc").is_err());
        assert!(relative("/").is_err());
    }

    #[test]
    fn tree_adds_parents_first() {
        let mut tree = Tree::default();
        tree.insert("/a/b/c", Node::Symlink { target: "x".into() })
            .unwrap();
        let paths: Vec<_> = tree.nodes.keys().cloned().collect();
        assert_eq!(
            paths,
            [
                PathBuf::from("a"),
                PathBuf::from("a/b"),
                PathBuf::from("a/b/c")
            ]
        );
    }
}
