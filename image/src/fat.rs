//! A FAT32 filesystem image made from plain files without mounting anything: `mkfs.vfat`
//! (dosfstools) creates it, `mcopy` (mtools) fills it. Volume id, times and every other
//! field come from the caller, so two builds give the same bytes.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::debian::{self, DebianError};

/// Writes a FAT32 image of `bytes` at `image` holding `files` (name in the root directory,
/// source file), every time set to `epoch`.
pub fn mkfat(
    image: &Path,
    bytes: u64,
    label: &str,
    volume_id: u32,
    epoch: u64,
    files: &[(String, PathBuf)],
) -> Result<(), DebianError> {
    let _ = std::fs::remove_file(image);
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
    let tool_error = |tool: &str, e: std::io::Error| DebianError::Tool {
        tool: tool.to_owned(),
        detail: e.to_string(),
    };
    debian::run(
        Command::new("mkfs.vfat")
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .args(["-C", "-F", "32", "-s", "1", "--invariant", "-n", label])
            .arg("-i")
            .arg(format!("{volume_id:08X}"))
            .arg(image)
            .arg((bytes / 1024).to_string()),
    )
    .map_err(|e| not_installed(e, "mkfs.vfat", "dosfstools"))?;
    for (name, src) in files {
        // mcopy -m keeps the source's modification time: fix it first (FAT stores local
        // time: TZ=UTC makes it the same everywhere).
        std::fs::File::options()
            .write(true)
            .open(src)
            .and_then(|f| f.set_modified(t))
            .map_err(|e| tool_error(&format!("touch {}", src.display()), e))?;
        debian::run(
            Command::new("mcopy")
                .env("TZ", "UTC")
                .env("MTOOLS_SKIP_CHECK", "1")
                .env("SOURCE_DATE_EPOCH", epoch.to_string())
                .args(["-Q", "-m", "-o", "-i"])
                .arg(image)
                .arg(src)
                .arg(format!("::/{name}")),
        )
        .map_err(|e| not_installed(e, "mcopy", "mtools"))?;
    }
    Ok(())
}

/// Names the package of a missing tool.
fn not_installed(e: DebianError, tool: &str, package: &str) -> DebianError {
    match e {
        DebianError::Tool { tool: t, detail } if detail.contains("No such file") => {
            DebianError::Tool {
                tool: t,
                detail: format!("{tool} is not installed (apt-get install {package}): {detail}"),
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_holds_the_files_and_is_reproducible() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("config.txt");
        std::fs::write(&a, "arm_64bit=1\n").expect("write");
        let b = dir.path().join("start4.elf");
        std::fs::write(&b, vec![0x5au8; 70_000]).expect("write");
        let files = vec![
            ("config.txt".to_owned(), a),
            ("start4.elf".to_owned(), b.clone()),
        ];
        let one = dir.path().join("one.vfat");
        let two = dir.path().join("two.vfat");
        mkfat(
            &one,
            64 << 20,
            "OUTPOST",
            0x1234_abcd,
            1_700_000_000,
            &files,
        )
        .expect("first");
        // Another time on the source files must not change the image.
        std::fs::File::options()
            .write(true)
            .open(&b)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()))
            .expect("touch");
        mkfat(
            &two,
            64 << 20,
            "OUTPOST",
            0x1234_abcd,
            1_700_000_000,
            &files,
        )
        .expect("second");
        let (x, y) = (
            std::fs::read(&one).expect("one"),
            std::fs::read(&two).expect("two"),
        );
        assert_eq!(x.len(), 64 << 20);
        assert!(x == y, "two builds differ");
        let out = Command::new("mtype")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&one)
            .arg("::/config.txt")
            .output()
            .expect("mtype");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "arm_64bit=1\n");
        // FAT32 ("FAT32   " at offset 82 of the boot sector) with the given volume id.
        assert_eq!(&x[82..90], b"FAT32   ");
        assert_eq!(&x[67..71], &0x1234_abcdu32.to_le_bytes());
    }
}
