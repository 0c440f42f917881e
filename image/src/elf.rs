//! Just enough of ELF64 little-endian to read what the image build needs: the `NEEDED`
//! shared libraries of a program and the `.modinfo` strings of a kernel module.

/// Why an ELF file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// Not a 64-bit little-endian ELF file, or a header points outside the file.
    #[error("not a 64-bit little-endian ELF file, or truncated")]
    Malformed,
}

/// One section: name and contents.
struct Section<'a> {
    name: &'a [u8],
    data: &'a [u8],
}

const SHT_NOBITS: u32 = 8;
const DT_NEEDED: u64 = 1;

fn u16_at(b: &[u8], at: usize) -> Result<u16, ElfError> {
    let s = b.get(at..at + 2).ok_or(ElfError::Malformed)?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, ElfError> {
    let s = b.get(at..at + 4).ok_or(ElfError::Malformed)?;
    Ok(u32::from_le_bytes(
        s.try_into().map_err(|_| ElfError::Malformed)?,
    ))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, ElfError> {
    let s = b.get(at..at + 8).ok_or(ElfError::Malformed)?;
    Ok(u64::from_le_bytes(
        s.try_into().map_err(|_| ElfError::Malformed)?,
    ))
}

fn usize_at(b: &[u8], at: usize) -> Result<usize, ElfError> {
    usize::try_from(u64_at(b, at)?).map_err(|_| ElfError::Malformed)
}

fn cstr(b: &[u8], at: usize) -> &[u8] {
    let tail = b.get(at..).unwrap_or_default();
    let end = tail.iter().position(|&c| c == 0).unwrap_or(tail.len());
    &tail[..end]
}

fn sections(b: &[u8]) -> Result<Vec<Section<'_>>, ElfError> {
    if b.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        return Err(ElfError::Malformed);
    }
    let shoff = usize_at(b, 0x28)?;
    let shentsize = usize::from(u16_at(b, 0x3a)?);
    let shnum = usize::from(u16_at(b, 0x3c)?);
    let shstrndx = usize::from(u16_at(b, 0x3e)?);
    let mut raw = Vec::with_capacity(shnum);
    for i in 0..shnum {
        let h = shoff + i * shentsize;
        let kind = u32_at(b, h + 4)?;
        let off = usize_at(b, h + 0x18)?;
        let size = usize_at(b, h + 0x20)?;
        let data = if kind == SHT_NOBITS {
            &[][..]
        } else {
            b.get(off..off.checked_add(size).ok_or(ElfError::Malformed)?)
                .ok_or(ElfError::Malformed)?
        };
        raw.push((u32_at(b, h)?, kind, data));
    }
    let names = raw.get(shstrndx).map(|s| s.2).ok_or(ElfError::Malformed)?;
    Ok(raw
        .into_iter()
        .map(|(name, _kind, data)| Section {
            name: cstr(names, name as usize),
            data,
        })
        .collect())
}

/// The `DT_NEEDED` entries of a dynamically linked program or library (empty when static).
pub fn needed(bytes: &[u8]) -> Result<Vec<String>, ElfError> {
    let secs = sections(bytes)?;
    let Some(dynamic) = secs.iter().find(|s| s.name == b".dynamic") else {
        return Ok(Vec::new());
    };
    let dynstr = secs
        .iter()
        .find(|s| s.name == b".dynstr")
        .ok_or(ElfError::Malformed)?;
    let mut out = Vec::new();
    for entry in dynamic.data.chunks_exact(16) {
        let tag = u64_at(entry, 0)?;
        if tag == 0 {
            break;
        }
        if tag == DT_NEEDED {
            let at = usize_at(entry, 8)?;
            out.push(String::from_utf8_lossy(cstr(dynstr.data, at)).into_owned());
        }
    }
    Ok(out)
}

/// The `key=value` strings of a kernel module's `.modinfo` section.
pub fn modinfo(bytes: &[u8]) -> Result<Vec<(String, String)>, ElfError> {
    let secs = sections(bytes)?;
    let Some(info) = secs.iter().find(|s| s.name == b".modinfo") else {
        return Ok(Vec::new());
    };
    Ok(info
        .data
        .split(|&c| c == 0)
        .filter_map(|s| {
            let s = String::from_utf8_lossy(s);
            let (k, v) = s.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 with a section-name table and one extra section holding `payload`.
    fn elf_with_section(name: &str, payload: &[u8]) -> Vec<u8> {
        let mut shstr = b"\0".to_vec();
        let name_at = shstr.len();
        shstr.extend_from_slice(name.as_bytes());
        shstr.push(0);
        let shstr_name = shstr.len();
        shstr.extend_from_slice(b".shstrtab\0");
        let mut b = vec![0u8; 64];
        b[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
        let payload_off = b.len();
        b.extend_from_slice(payload);
        let shstr_off = b.len();
        b.extend_from_slice(&shstr);
        let shoff = b.len();
        let mut header = |name: usize, kind: u32, off: usize, size: usize| {
            let mut h = vec![0u8; 64];
            h[0..4].copy_from_slice(&u32::try_from(name).expect("small").to_le_bytes());
            h[4..8].copy_from_slice(&kind.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            b.extend_from_slice(&h);
        };
        header(0, 0, 0, 0);
        header(name_at, 1, payload_off, payload.len());
        header(shstr_name, 3, shstr_off, shstr.len());
        b[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        b[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        b[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        b[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        b
    }

    #[test]
    fn modinfo_strings_are_split_into_keys_and_values() {
        let elf = elf_with_section(
            ".modinfo",
            b"license=GPL\0depends=jbd2,mbcache\0\0alias=fs-ext4\0",
        );
        let info = modinfo(&elf).expect("valid");
        assert!(info.contains(&("depends".to_owned(), "jbd2,mbcache".to_owned())));
        assert!(info.contains(&("alias".to_owned(), "fs-ext4".to_owned())));
        assert_eq!(info.len(), 3);
    }

    #[test]
    fn a_program_without_dynamic_section_needs_nothing() {
        let elf = elf_with_section(".text", b"\x00\x01");
        assert!(needed(&elf).expect("valid").is_empty());
    }

    #[test]
    fn garbage_and_truncated_headers_are_errors_not_panics() {
        assert!(modinfo(b"MZ not elf").is_err());
        let mut elf = elf_with_section(".modinfo", b"a=b\0");
        elf.truncate(70);
        assert!(modinfo(&elf).is_err());
    }
}
