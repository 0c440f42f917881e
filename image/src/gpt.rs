//! A GUID partition table written into a plain image file (no loop devices): protective
//! MBR, primary header and entries at the start, the backup copies at the end.

use std::io::{Seek, SeekFrom, Write};

use sha2::{Digest, Sha256};

/// Logical block size of the image.
pub const BLOCK: u64 = 512;
/// Partitions start on 1 MiB boundaries.
pub const ALIGN: u64 = 1024 * 1024;
const ENTRIES: u64 = 128;
const ENTRY_SIZE: u64 = 128;
/// "Linux filesystem data" 0FC63DAF-8483-4772-8E79-3D69D8477DE4 in on-disk byte order.
const LINUX_FS: [u8; 16] = [
    0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4,
];

/// "Microsoft basic data" EBD0A0A2-B9E5-4433-87C0-68B6B72699C7 in on-disk byte order: the
/// FAT partition type the Raspberry Pi boot loader looks for on a GPT disk.
const BASIC_DATA: [u8; 16] = [
    0xa2, 0xa0, 0xd0, 0xeb, 0xe5, 0xb9, 0x33, 0x44, 0x87, 0xc0, 0x68, 0xb6, 0xb7, 0x26, 0x99, 0xc7,
];

/// What a partition holds (its GPT type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A Linux filesystem (ext4, squashfs).
    Linux,
    /// A FAT filesystem a boot loader reads ("Microsoft basic data").
    Fat,
}

/// One partition: GPT name, first block, block count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// The GPT partition name the initramfs looks for (`outpost-root-a`).
    pub name: String,
    /// First logical block.
    pub first: u64,
    /// Size in blocks.
    pub blocks: u64,
    /// Its type ([`layout`] makes every partition [`Kind::Linux`]).
    pub kind: Kind,
}

/// Lays `sizes` (name, bytes) out one after another on 1 MiB boundaries; returns the
/// partitions and the disk size in bytes.
pub fn layout(sizes: &[(&str, u64)]) -> (Vec<Partition>, u64) {
    let mut at = ALIGN;
    let mut parts = Vec::new();
    for (name, bytes) in sizes {
        let bytes = bytes.div_ceil(ALIGN) * ALIGN;
        parts.push(Partition {
            name: (*name).to_owned(),
            first: at / BLOCK,
            blocks: bytes / BLOCK,
            kind: Kind::Linux,
        });
        at += bytes;
    }
    // Room for the backup entries (16 KiB) and header, rounded to the next MiB.
    (parts, at + ALIGN)
}

/// A GUID derived from `seed` (random-looking, fixed for a given seed; RFC 4122 version 4
/// bits set so tools accept it).
pub fn guid(seed: &str) -> [u8; 16] {
    let h = Sha256::digest(seed.as_bytes());
    let mut g = [0u8; 16];
    g.copy_from_slice(&h[..16]);
    g[7] = (g[7] & 0x0f) | 0x40;
    g[8] = (g[8] & 0x3f) | 0x80;
    g
}

/// The GUID as text (the mixed-endian form `sgdisk` and `blkid` print).
pub fn guid_string(g: &[u8; 16]) -> String {
    format!(
        "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{}",
        g[3],
        g[2],
        g[1],
        g[0],
        g[5],
        g[4],
        g[7],
        g[6],
        g[8],
        g[9],
        g[10..]
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<String>()
    )
}

/// Writes the protective MBR and both GPT copies into `disk` (already `disk_bytes` long);
/// GUIDs come from `seed`.
pub fn write<W: Write + Seek>(
    disk: &mut W,
    disk_bytes: u64,
    parts: &[Partition],
    seed: &str,
) -> std::io::Result<()> {
    let last_lba = disk_bytes / BLOCK - 1;
    let entry_blocks = ENTRIES * ENTRY_SIZE / BLOCK;
    let mut entries = vec![0u8; usize::try_from(ENTRIES * ENTRY_SIZE).unwrap_or(0)];
    for (i, p) in parts.iter().enumerate() {
        let e = &mut entries[i * 128..(i + 1) * 128];
        e[0..16].copy_from_slice(match p.kind {
            Kind::Linux => &LINUX_FS,
            Kind::Fat => &BASIC_DATA,
        });
        e[16..32].copy_from_slice(&guid(&format!("{seed}/partition/{}", p.name)));
        e[32..40].copy_from_slice(&p.first.to_le_bytes());
        e[40..48].copy_from_slice(&(p.first + p.blocks - 1).to_le_bytes());
        for (j, unit) in p.name.encode_utf16().take(36).enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&unit.to_le_bytes());
        }
    }
    let entries_crc = crc32(&entries);
    let disk_guid = guid(&format!("{seed}/disk"));
    let header = |current: u64, backup: u64, entries_lba: u64| {
        let mut h = vec![0u8; 92];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&current.to_le_bytes());
        h[32..40].copy_from_slice(&backup.to_le_bytes());
        h[40..48].copy_from_slice(&(2 + entry_blocks).to_le_bytes());
        h[48..56].copy_from_slice(&(last_lba - 1 - entry_blocks).to_le_bytes());
        h[56..72].copy_from_slice(&disk_guid);
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&u32::try_from(ENTRIES).unwrap_or(0).to_le_bytes());
        h[84..88].copy_from_slice(&u32::try_from(ENTRY_SIZE).unwrap_or(0).to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32(&h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h.resize(usize::try_from(BLOCK).unwrap_or(512), 0);
        h
    };
    let mut mbr = vec![0u8; 512];
    mbr[446 + 4] = 0xee;
    mbr[446 + 1..446 + 4].copy_from_slice(&[0, 2, 0]);
    mbr[446 + 5..446 + 8].copy_from_slice(&[0xff, 0xff, 0xff]);
    mbr[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
    let mbr_blocks = u32::try_from(last_lba).unwrap_or(u32::MAX);
    mbr[446 + 12..446 + 16].copy_from_slice(&mbr_blocks.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    let mut put = |lba: u64, bytes: &[u8]| -> std::io::Result<()> {
        disk.seek(SeekFrom::Start(lba * BLOCK))?;
        disk.write_all(bytes)
    };
    put(0, &mbr)?;
    put(1, &header(1, last_lba, 2))?;
    put(2, &entries)?;
    put(last_lba - entry_blocks, &entries)?;
    put(last_lba, &header(last_lba, 1, last_lba - entry_blocks))?;
    Ok(())
}

/// CRC-32 (IEEE 802.3, reflected), as GPT uses it.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn layout_aligns_partitions_to_a_mebibyte() {
        let (parts, size) = layout(&[("a", 10), ("b", ALIGN + 1)]);
        assert_eq!(parts[0].first * BLOCK, ALIGN);
        assert_eq!(parts[0].blocks * BLOCK, ALIGN);
        assert_eq!(parts[1].first * BLOCK, 2 * ALIGN);
        assert_eq!(parts[1].blocks * BLOCK, 2 * ALIGN);
        assert_eq!(size, 5 * ALIGN);
    }

    #[test]
    fn table_has_valid_headers_and_named_entries() {
        let (mut parts, size) = layout(&[("outpost-boot", ALIGN), ("outpost-root-a", ALIGN)]);
        parts[0].kind = Kind::Fat;
        let mut disk = std::io::Cursor::new(vec![0u8; usize::try_from(size).expect("small")]);
        write(&mut disk, size, &parts, "seed").expect("written");
        let d = disk.into_inner();
        assert_eq!(&d[510..512], &[0x55, 0xaa]);
        let h = &d[512..512 + 92];
        assert_eq!(&h[..8], b"EFI PART");
        let mut zeroed = h.to_vec();
        zeroed[16..20].fill(0);
        assert_eq!(crc32(&zeroed).to_le_bytes(), h[16..20]);
        let name: Vec<u16> = d[1024 + 128 + 56..1024 + 128 + 56 + 28]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(String::from_utf16_lossy(&name), "outpost-root-a");
        assert_eq!(&d[1024..1024 + 16], &BASIC_DATA);
        assert_eq!(&d[1024 + 128..1024 + 128 + 16], &LINUX_FS);
        let backup = &d[d.len() - 512..d.len() - 512 + 8];
        assert_eq!(backup, b"EFI PART");
    }

    #[test]
    fn guids_are_fixed_per_seed_and_differ_between_seeds() {
        assert_eq!(guid("x"), guid("x"));
        assert_ne!(guid("x"), guid("y"));
        assert_eq!(guid_string(&guid("x")).len(), 36);
    }
}
