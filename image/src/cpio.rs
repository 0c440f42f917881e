//! A reproducible cpio "newc" archive (the initramfs format): entries sorted by path, owner
//! root, one fixed mtime, inode numbers in order.

use std::collections::BTreeMap;

/// What an archive entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory with its mode bits.
    Dir(u32),
    /// A regular file: mode bits and contents.
    File(u32, Vec<u8>),
    /// A symbolic link to the target.
    Symlink(String),
    /// A character device node (major, minor), mode 0600.
    CharDevice(u32, u32),
}

/// An archive being assembled; paths are relative, without a leading `/`.
#[derive(Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    /// Adds (or replaces) an entry and creates its missing parent directories (0755).
    pub fn add(&mut self, path: &str, entry: Entry) {
        let path = path.trim_start_matches('/').to_owned();
        let mut parent = path.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            self.entries
                .entry(p.to_owned())
                .or_insert(Entry::Dir(0o755));
            parent = p;
        }
        self.entries.insert(path, entry);
    }

    /// The newc bytes with every mtime set to `mtime`.
    pub fn to_bytes(&self, mtime: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, (path, entry)) in (1u32..).zip(self.entries.iter()) {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match entry {
                Entry::Dir(m) => (0o040_000 | m, &[], (0, 0)),
                Entry::File(m, d) => (0o100_000 | m, d, (0, 0)),
                Entry::Symlink(t) => (0o120_777, t.as_bytes(), (0, 0)),
                Entry::CharDevice(major, minor) => (0o020_600, &[], (*major, *minor)),
            };
            let nlink = if matches!(entry, Entry::Dir(_)) { 2 } else { 1 };
            let head = Header {
                ino,
                mode,
                nlink,
                mtime,
                size: data.len(),
                rdev,
            };
            write_header(&mut out, &head, path);
            out.extend_from_slice(data);
            pad4(&mut out);
        }
        let trailer = Header {
            ino: 0,
            mode: 0,
            nlink: 1,
            mtime: 0,
            size: 0,
            rdev: (0, 0),
        };
        write_header(&mut out, &trailer, "TRAILER!!!");
        // The kernel reads the archive in 512-byte blocks like cpio writes them.
        while !out.len().is_multiple_of(512) {
            out.push(0);
        }
        out
    }
}

struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    size: usize,
    rdev: (u32, u32),
}

fn write_header(out: &mut Vec<u8>, h: &Header, name: &str) {
    let size = u32::try_from(h.size).unwrap_or(u32::MAX);
    let namesize = u32::try_from(name.len() + 1).unwrap_or(u32::MAX);
    let fields = [
        h.ino, h.mode, 0, 0, h.nlink, h.mtime, size, 0, 0, h.rdev.0, h.rdev.1, namesize, 0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_sorted_with_parents_and_a_trailer() {
        let mut a = Archive::default();
        a.add("/bin/busybox", Entry::File(0o755, b"BB".to_vec()));
        a.add("init", Entry::File(0o755, b"#!/bin/sh\n".to_vec()));
        a.add("bin/sh", Entry::Symlink("busybox".to_owned()));
        let bytes = a.to_bytes(1_700_000_000);
        let text = String::from_utf8_lossy(&bytes);
        let bin = text.find("bin\0").expect("parent dir");
        let bb = text.find("bin/busybox\0").expect("file");
        let sh = text.find("bin/sh\0").expect("link");
        let init = text.find("init\0").expect("init");
        assert!(bin < bb && bb < sh && sh < init);
        assert!(text.contains("TRAILER!!!"));
        assert_eq!(bytes.len() % 512, 0);
        // The first header: magic, inode 1, directory mode 040755, mtime.
        assert!(text.starts_with("07070100000001000041ED"));
        assert!(text.contains(&format!("{:08X}", 1_700_000_000u32)));
    }

    #[test]
    fn the_same_input_gives_the_same_bytes_whatever_the_insertion_order() {
        let mut a = Archive::default();
        a.add("b", Entry::File(0o644, vec![1]));
        a.add("a", Entry::File(0o644, vec![2]));
        let mut b = Archive::default();
        b.add("a", Entry::File(0o644, vec![2]));
        b.add("b", Entry::File(0o644, vec![1]));
        assert_eq!(a.to_bytes(5), b.to_bytes(5));
    }
}
