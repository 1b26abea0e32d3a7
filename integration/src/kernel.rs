//! The guest kernel: the unpacked Debian kernel package in the cache, the ELF
//! `vmlinux` extracted from its bzImage, and module load order from each
//! `.ko`'s `.modinfo` section (the host has no depmod or modinfo).

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{io, Error, Result};

/// A kernel unpacked by `install-deps.sh` into `<cache>/kernel/<release>/`.
#[derive(Debug)]
pub struct Kernel {
    /// The kernel release, e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// The unpacked package's root directory.
    pub root: PathBuf,
    /// `boot/vmlinuz-<release>` (a bzImage).
    pub bzimage: PathBuf,
    /// `lib/modules/<release>`.
    pub modules_dir: PathBuf,
    /// Module name (with `_`, as the kernel spells it) to its `.ko` file.
    index: HashMap<String, PathBuf>,
    /// Modules built into the image (from `modules.builtin`).
    builtin: BTreeSet<String>,
}

/// One module to load, in load order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// The module name, e.g. `virtio_scsi`.
    pub name: String,
    /// Its `.ko` file on the host.
    pub path: PathBuf,
    /// Its path relative to `lib/modules/<release>`.
    pub rel_path: PathBuf,
}

impl Kernel {
    /// Opens the kernel that `<cache>/kernel/current` names.
    pub fn open(cache: &Path) -> Result<Self> {
        let current = cache.join("kernel/current");
        let release = fs::read_to_string(&current)
            .map_err(|_| Error::Missing {
                what: format!("guest kernel ({} is missing)", current.display()),
            })?
            .trim()
            .to_string();
        let root = cache.join("kernel").join(&release);
        let bzimage = root.join("boot").join(format!("vmlinuz-{release}"));
        if !bzimage.is_file() {
            return Err(Error::Missing {
                what: format!("guest kernel image {}", bzimage.display()),
            });
        }
        let modules_dir = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|d| root.join(d).join(&release))
            .find(|d| d.is_dir())
            .ok_or_else(|| Error::Missing {
                what: format!("kernel modules for {release} under {}", root.display()),
            })?;
        let mut index = HashMap::new();
        index_modules(&modules_dir.join("kernel"), &mut index)?;
        let builtin = match fs::read_to_string(modules_dir.join("modules.builtin")) {
            Ok(text) => text.lines().filter_map(module_name_of).collect(),
            Err(_) => BTreeSet::new(),
        };
        Ok(Self {
            release,
            root,
            bzimage,
            modules_dir,
            index,
            builtin,
        })
    }

    /// The ELF `vmlinux` for a fast PVH boot, extracted from the bzImage into
    /// `<root>/vmlinux` on first use and reused afterwards.
    pub fn vmlinux(&self) -> Result<PathBuf> {
        let out = self.root.join("vmlinux");
        if out.is_file() {
            return Ok(out);
        }
        let image =
            fs::read(&self.bzimage).map_err(io(format!("read {}", self.bzimage.display())))?;
        let elf = extract_vmlinux(&image, &self.bzimage)?;
        write_atomically(&out, &elf)?;
        Ok(out)
    }

    /// Whether `name` is built into the kernel image.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize(name))
    }

    /// The `.ko` file of module `name`, if the tree has one.
    pub fn module_path(&self, name: &str) -> Option<&Path> {
        self.index.get(&normalize(name)).map(PathBuf::as_path)
    }

    /// The modules to insmod, in order, so that `names` and everything they
    /// depend on load: each module after its `depends=` and the `softdep=`
    /// `pre:` modules that exist as files; `post:` softdeps after it. Built-in
    /// modules are left out; unknown names are an error.
    pub fn load_order<S: AsRef<str>>(&self, names: &[S]) -> Result<Vec<Module>> {
        let mut state = HashMap::new();
        let mut order = Vec::new();
        for name in names {
            self.visit(
                &normalize(name.as_ref()),
                "the caller",
                &mut state,
                &mut order,
            )?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        needed_by: &str,
        state: &mut HashMap<String, bool>,
        order: &mut Vec<Module>,
    ) -> Result<()> {
        match state.get(name) {
            Some(true) => return Ok(()),
            Some(false) => return Err(Error::ModuleCycle(name.to_string())),
            None => {}
        }
        let Some(path) = self.index.get(name) else {
            if self.builtin.contains(name) {
                state.insert(name.to_string(), true);
                return Ok(());
            }
            return Err(Error::UnknownModule {
                name: name.to_string(),
                dir: self.modules_dir.clone(),
                needed_by: needed_by.to_string(),
            });
        };
        state.insert(name.to_string(), false);
        let info = ModInfo::read(path)?;
        for dep in &info.depends {
            self.visit(dep, name, state, order)?;
        }
        for dep in info
            .softdep_pre
            .iter()
            .filter(|d| self.index.contains_key(*d))
        {
            self.visit(dep, name, state, order)?;
        }
        state.insert(name.to_string(), true);
        order.push(Module {
            name: name.to_string(),
            path: path.clone(),
            rel_path: path
                .strip_prefix(&self.modules_dir)
                .unwrap_or(path)
                .to_path_buf(),
        });
        for dep in info
            .softdep_post
            .iter()
            .filter(|d| self.index.contains_key(*d))
        {
            self.visit(dep, name, state, order)?;
        }
        Ok(())
    }
}

/// The kernel's spelling of a module name: `-` becomes `_`.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// `kernel/drivers/scsi/sd_mod.ko` -> `sd_mod`.
fn module_name_of(path: &str) -> Option<String> {
    let file = path.trim().rsplit('/').next()?;
    let stem = file
        .strip_suffix(".ko")
        .or_else(|| file.strip_suffix(".ko.xz"))
        .or_else(|| file.strip_suffix(".ko.zst"))
        .or_else(|| file.strip_suffix(".ko.gz"))?;
    Some(normalize(stem))
}

fn index_modules(dir: &Path, index: &mut HashMap<String, PathBuf>) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(io(format!("read directory {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(io(format!("read directory {}", dir.display())))?;
        let path = entry.path();
        let ty = entry
            .file_type()
            .map_err(io(format!("stat {}", path.display())))?;
        if ty.is_dir() {
            index_modules(&path, index)?;
        } else if let Some(name) = path.to_str().and_then(module_name_of) {
            if path.extension().is_some_and(|e| e == "ko") {
                index.insert(name, path);
            }
        }
    }
    Ok(())
}

/// The dependency fields of a module's `.modinfo` section.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ModInfo {
    /// `depends=`: modules that must load first.
    pub depends: Vec<String>,
    /// `softdep=` `pre:` names (modules or aliases).
    pub softdep_pre: Vec<String>,
    /// `softdep=` `post:` names (modules or aliases).
    pub softdep_post: Vec<String>,
}

impl ModInfo {
    /// Reads the `.modinfo` section of the `.ko` at `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let data = fs::read(path).map_err(io(format!("read {}", path.display())))?;
        let section = elf_section(&data, ".modinfo").map_err(|reason| Error::BadModule {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(Self::parse(section))
    }

    /// Parses a `.modinfo` section: NUL-separated `key=value` strings.
    pub fn parse(section: &[u8]) -> Self {
        let mut info = Self::default();
        for entry in section.split(|&b| b == 0) {
            let Ok(entry) = std::str::from_utf8(entry) else {
                continue;
            };
            if let Some(list) = entry.strip_prefix("depends=") {
                info.depends
                    .extend(list.split(',').filter(|s| !s.is_empty()).map(normalize));
            } else if let Some(spec) = entry.strip_prefix("softdep=") {
                let mut post = false;
                for word in spec.split_whitespace() {
                    match word {
                        "pre:" => post = false,
                        "post:" => post = true,
                        name if post => info.softdep_post.push(normalize(name)),
                        name => info.softdep_pre.push(normalize(name)),
                    }
                }
            }
        }
        info
    }
}

fn read_u16(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        data.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        data.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn read_u64(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        data.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// The contents of section `want` of a little-endian ELF64 file.
pub fn elf_section<'a>(data: &'a [u8], want: &str) -> Result<&'a [u8], String> {
    if data.get(..4) != Some(b"\x7fELF") {
        return Err("no ELF magic".into());
    }
    if data.get(4) != Some(&2) || data.get(5) != Some(&1) {
        return Err("not a little-endian ELF64 file".into());
    }
    let short = || "truncated ELF header".to_string();
    let to_usize = |v: u64| usize::try_from(v).map_err(|_| "offset out of range".to_string());
    let shoff = to_usize(read_u64(data, 0x28).ok_or_else(short)?)?;
    let shentsize = usize::from(read_u16(data, 0x3a).ok_or_else(short)?);
    let shnum = usize::from(read_u16(data, 0x3c).ok_or_else(short)?);
    let shstrndx = usize::from(read_u16(data, 0x3e).ok_or_else(short)?);
    if shentsize < 64 {
        return Err(format!("section header size {shentsize} < 64"));
    }
    let header = |i: usize| -> Result<(u32, usize, usize), String> {
        let at = i
            .checked_mul(shentsize)
            .and_then(|o| o.checked_add(shoff))
            .ok_or("section header offset overflows")?;
        let bad = || format!("section header {i} out of bounds");
        let name = read_u32(data, at).ok_or_else(bad)?;
        let offset = to_usize(read_u64(data, at + 24).ok_or_else(bad)?)?;
        let size = to_usize(read_u64(data, at + 32).ok_or_else(bad)?)?;
        Ok((name, offset, size))
    };
    let contents = |offset: usize, size: usize| {
        offset
            .checked_add(size)
            .and_then(|end| data.get(offset..end))
            .ok_or_else(|| "section contents out of bounds".to_string())
    };
    let (_, str_off, str_size) = header(shstrndx)?;
    let names = contents(str_off, str_size)?;
    for i in 0..shnum {
        let (name, offset, size) = header(i)?;
        let name = usize::try_from(name).map_err(|_| "name offset out of range")?;
        let Some(rest) = names.get(name..) else {
            continue;
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        if &rest[..end] == want.as_bytes() {
            return contents(offset, size);
        }
    }
    Err(format!("no {want} section"))
}

/// Compression formats a bzImage payload may use, with the magic that starts
/// the stream and the command that unpacks it (as `scripts/extract-vmlinux`).
const PAYLOADS: &[(&str, &[u8], &[&str])] = &[
    ("gzip", b"\x1f\x8b\x08", &["gzip", "-dc"]),
    ("xz", b"\xfd7zXZ\x00", &["xz", "-dc"]),
    ("zstd", b"\x28\xb5\x2f\xfd", &["zstd", "-dc"]),
    ("bzip2", b"BZh", &["bzip2", "-dc"]),
    ("lzma", b"\x5d\x00\x00\x00", &["xz", "--format=lzma", "-dc"]),
    ("lzo", b"\x89LZO", &["lzop", "-dc"]),
    ("lz4", b"\x02\x21\x4c\x18", &["lz4", "-dc"]),
];

/// Finds the compressed kernel inside a bzImage and unpacks it: tries each
/// offset where a known magic occurs, keeps the first output that is ELF.
pub fn extract_vmlinux(image: &[u8], path: &Path) -> Result<Vec<u8>> {
    let mut tried = Vec::new();
    for (format, magic, cmd) in PAYLOADS {
        let mut at = 0;
        while let Some(pos) = find(&image[at..], magic).map(|p| p + at) {
            at = pos + 1;
            tried.push(format!("{format}@{pos}"));
            // Trailing data after the stream makes the tools complain; the
            // output they wrote before that is what counts.
            if let Ok(out) = unpack(cmd, &image[pos..]) {
                if out.starts_with(b"\x7fELF") {
                    return Ok(out);
                }
            }
        }
    }
    Err(Error::NoVmlinux {
        path: path.to_path_buf(),
        tried: if tried.is_empty() {
            "no known magic".into()
        } else {
            tried.join(", ")
        },
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn unpack(cmd: &[&str], input: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut child = Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        // The tool may stop reading at the end of the stream: ignore EPIPE.
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output()?;
    let _ = feeder.join();
    Ok(out.stdout)
}

/// Writes `data` to `path` through a temporary file in the same directory and
/// a rename, so concurrent readers see the old file or the whole new one.
pub(crate) fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(io(format!("create a temporary file in {}", dir.display())))?;
    tmp.write_all(data)
        .map_err(io(format!("write a temporary file in {}", dir.display())))?;
    // Readable by every user that runs the tests, like the rest of the cache.
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))
        .map_err(io(format!("chmod a temporary file in {}", dir.display())))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .map_err(io(format!("rename into {}", path.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_depends_and_softdeps() {
        let section =
            b"license=GPL\0depends=scsi_mod,t10-pi,\0softdep=pre: crc32c post: foo-bar\0\0";
        let info = ModInfo::parse(section);
        assert_eq!(info.depends, ["scsi_mod", "t10_pi"]);
        assert_eq!(info.softdep_pre, ["crc32c"]);
        assert_eq!(info.softdep_post, ["foo_bar"]);
        assert_eq!(ModInfo::parse(b"depends=\0"), ModInfo::default());
    }

    #[test]
    fn module_names_from_paths() {
        assert_eq!(
            module_name_of("kernel/drivers/scsi/sd_mod.ko").as_deref(),
            Some("sd_mod")
        );
        assert_eq!(
            module_name_of("kernel/lib/crc-t10dif.ko").as_deref(),
            Some("crc_t10dif")
        );
        assert_eq!(module_name_of("kernel/lib/README"), None);
    }

    #[test]
    fn elf_section_rejects_garbage() {
        assert!(elf_section(b"", ".modinfo").is_err());
        assert!(elf_section(b"\x7fELF\x02\x01", ".modinfo").is_err());
        let mut header = vec![0u8; 64];
        header[..6].copy_from_slice(b"\x7fELF\x02\x01");
        header[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        header[0x3a] = 64;
        header[0x3c] = 1;
        assert!(elf_section(&header, ".modinfo").is_err());
    }

    #[test]
    fn elf_section_finds_modinfo_in_a_host_binary_layout() {
        // A minimal ELF64 with a null section, .shstrtab and .modinfo.
        let shstrtab = b"\0.shstrtab\0.modinfo\0";
        let modinfo = b"depends=a,b\0";
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let str_off = elf.len();
        elf.extend_from_slice(shstrtab);
        let info_off = elf.len();
        elf.extend_from_slice(modinfo);
        while !elf.len().is_multiple_of(8) {
            elf.push(0);
        }
        let shoff = elf.len();
        let mut sh = |name: u32, off: usize, size: usize| {
            let mut h = vec![0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&h);
        };
        sh(0, 0, 0);
        sh(1, str_off, shstrtab.len());
        sh(11, info_off, modinfo.len());
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a] = 64;
        elf[0x3c] = 3;
        elf[0x3e] = 1;
        assert_eq!(elf_section(&elf, ".modinfo").unwrap(), modinfo);
        assert!(elf_section(&elf, ".nope").is_err());
    }
}
