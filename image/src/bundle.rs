//! `outpost-image bundle`: an update bundle (outpost-bundle format) from a built image
//! directory: its root.squashfs signed together with the release, profile and kernel of
//! its manifest.json.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use outpost_bundle::{Manifest, Release};
use serde::Deserialize;

/// Why no bundle was written.
#[derive(Debug, thiserror::Error)]
pub enum MakeBundleError {
    /// Reading or writing a file failed.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        error: std::io::Error,
    },
    /// manifest.json lacks a field or does not decode.
    #[error("{path}: {detail}")]
    ImageManifest {
        /// manifest.json.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// root.squashfs is not what the image manifest recorded.
    #[error(
        "{path} changed since the image was built: SHA-256 {actual}, manifest.json says {recorded}"
    )]
    Changed {
        /// root.squashfs.
        path: PathBuf,
        /// Its SHA-256 now.
        actual: String,
        /// What manifest.json says.
        recorded: String,
    },
    /// The key or the bundle format refused.
    #[error(transparent)]
    Bundle(#[from] outpost_bundle::BundleError),
}

/// The parts of an image's manifest.json a bundle needs.
#[derive(Debug, Deserialize)]
struct ImageManifest {
    version: String,
    source_date_epoch: u64,
    profile: String,
    kernel: KernelInfo,
    artifacts: std::collections::BTreeMap<String, Artifact>,
}

#[derive(Debug, Deserialize)]
struct KernelInfo {
    release: String,
}

#[derive(Debug, Deserialize)]
struct Artifact {
    sha256: String,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    /// Id of the signing key.
    pub key_id: String,
    /// The release inside.
    pub release: Release,
    /// Profile and kernel it installs on.
    pub profile: String,
    /// Kernel release.
    pub kernel: String,
    /// Size of the bundle file in bytes.
    pub bytes: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MakeBundleError + '_ {
    move |error| MakeBundleError::Io {
        path: path.to_owned(),
        error,
    }
}

/// Writes the bundle of image directory `image` signed with the secret key file `key` to
/// `out` (through `out.partial`, renamed when complete).
pub fn make_bundle(image: &Path, key: &Path, out: &Path) -> Result<Written, MakeBundleError> {
    let manifest_path = image.join("manifest.json");
    let text = std::fs::read_to_string(&manifest_path).map_err(io(&manifest_path))?;
    let m: ImageManifest =
        serde_json::from_str(&text).map_err(|e| MakeBundleError::ImageManifest {
            path: manifest_path.clone(),
            detail: e.to_string(),
        })?;
    let artifact = |name: &str| {
        m.artifacts
            .get(name)
            .map(|a| a.sha256.clone())
            .ok_or_else(|| MakeBundleError::ImageManifest {
                path: manifest_path.clone(),
                detail: format!("no artifacts[{name:?}]"),
            })
    };
    let sbom_sha256 = artifact("sbom.json")?;
    let root_sha256 = artifact("root.squashfs")?;

    let key_text = std::fs::read_to_string(key).map_err(io(key))?;
    let signing = outpost_bundle::parse_secret_key(&key_text)?;

    let root = image.join("root.squashfs");
    let payload =
        outpost_bundle::payload_of(&mut BufReader::new(File::open(&root).map_err(io(&root))?))?;
    if payload.sha256 != root_sha256 {
        return Err(MakeBundleError::Changed {
            path: root,
            actual: payload.sha256,
            recorded: root_sha256,
        });
    }
    let manifest = Manifest {
        format: outpost_bundle::FORMAT,
        name: "outpost".to_owned(),
        release: Release {
            version: m.version,
            build: m.source_date_epoch,
        },
        profile: m.profile,
        kernel: m.kernel.release,
        store_schema: 0,
        rootfs: payload,
        sbom_sha256,
    };

    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let result = (|| {
        let file = File::create(&partial).map_err(io(&partial))?;
        let mut w = BufWriter::new(file);
        let mut r = BufReader::new(File::open(&root).map_err(io(&root))?);
        outpost_bundle::write_bundle(&mut w, &manifest, &signing, &mut r)?;
        let file = w.into_inner().map_err(|e| MakeBundleError::Io {
            path: partial.clone(),
            error: e.into_error(),
        })?;
        file.sync_all().map_err(io(&partial))?;
        std::fs::rename(&partial, out).map_err(io(out))
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    let bytes = std::fs::metadata(out).map_err(io(out))?.len();
    Ok(Written {
        key_id: outpost_bundle::key_id(&signing.verifying_key()),
        release: manifest.release,
        profile: manifest.profile,
        kernel: manifest.kernel,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn image_dir(dir: &Path, root: &[u8]) {
        std::fs::write(dir.join("root.squashfs"), root).expect("root");
        let manifest = serde_json::json!({
            "name": "outpost",
            "version": "0.2.0",
            "profile": "qemu-virt",
            "source_date_epoch": 1_700_000_100u64,
            "kernel": { "release": "6.1.0-28-arm64", "package": "x", "version": "y" },
            "artifacts": {
                "root.squashfs": { "bytes": root.len(), "sha256": hex(&Sha256::digest(root)) },
                "sbom.json": { "bytes": 2, "sha256": "ab".repeat(32) },
            },
        });
        std::fs::write(dir.join("manifest.json"), manifest.to_string()).expect("manifest");
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn a_bundle_verifies_with_the_public_key_and_carries_the_image_release() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = vec![5u8; 300_000];
        image_dir(dir.path(), &root);
        let pair = crate::keys::keygen(&dir.path().join("k"), "test").expect("keygen");
        let out = dir.path().join("update.bundle");
        let w = make_bundle(dir.path(), &pair.secret, &out).expect("bundle");
        assert_eq!(w.key_id, pair.id);
        assert_eq!(w.release.build, 1_700_000_100);
        assert!(!dir.path().join("update.bundle.partial").exists());

        let public =
            outpost_bundle::parse_public_key(&std::fs::read_to_string(&pair.public).expect("pub"))
                .expect("public key");
        let bytes = std::fs::read(&out).expect("bundle file");
        assert_eq!(bytes.len() as u64, w.bytes);
        let mut r = &bytes[..];
        let v = outpost_bundle::read_header(&mut r, &[public]).expect("verifies");
        assert_eq!(v.manifest.release.version, "0.2.0");
        assert_eq!(v.manifest.profile, "qemu-virt");
        assert_eq!(v.manifest.kernel, "6.1.0-28-arm64");
        assert_eq!(v.manifest.sbom_sha256, "ab".repeat(32));
        assert_eq!(v.manifest.store_schema, 0);
        let mut payload = Vec::new();
        outpost_bundle::copy_payload(&mut r, &v.manifest, &mut payload, |_| {}).expect("payload");
        assert_eq!(payload, root);
    }

    #[test]
    fn a_changed_root_or_a_public_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        image_dir(dir.path(), b"root");
        let pair = crate::keys::keygen(&dir.path().join("k"), "test").expect("keygen");
        let out = dir.path().join("u.bundle");
        let err = make_bundle(dir.path(), &pair.public, &out).expect_err("public key");
        assert!(matches!(err, MakeBundleError::Bundle(_)), "{err}");
        std::fs::write(dir.path().join("root.squashfs"), b"r00t").expect("change");
        let err = make_bundle(dir.path(), &pair.secret, &out).expect_err("changed");
        assert!(matches!(err, MakeBundleError::Changed { .. }), "{err}");
        assert!(!out.exists());
    }
}
