//! What a packed executable refuses before it boots anything.

use smolvm_pack_format::{
    Compression, Manifest, SectionInput, SectionKind, SectionSource, write_pack,
};
use smolvm_stub::{App, AppError, RunOptions, locate};

fn pack(dir: &std::path::Path, host_platform: &str) -> std::path::PathBuf {
    let out = dir.join("app.smolmachine");
    let manifest = Manifest {
        platform: "linux/amd64".into(),
        host_platform: host_platform.into(),
        created: "1970-01-01T00:00:00Z".into(),
        smolvm_version: "0.0.0".into(),
        ..Default::default()
    };
    let section = |kind, bytes: &[u8]| SectionInput {
        kind,
        source: SectionSource::Bytes(bytes.to_vec()),
        compression: Compression::Zstd,
    };
    write_pack(
        &out,
        manifest,
        vec![
            section(SectionKind::Kernel, b"kernel"),
            section(SectionKind::Initramfs, b"initramfs"),
        ],
    )
    .unwrap();
    out
}

#[test]
fn a_pack_for_another_host_is_refused_with_the_platforms() {
    let dir = tempfile::tempdir().unwrap();
    // Keep the section cache inside the test.
    unsafe { std::env::set_var("XDG_CACHE_HOME", dir.path().join("cache")) };
    let exe = dir.path().join("app");
    std::fs::write(&exe, b"\x7fELF not really").unwrap();
    pack(dir.path(), "linux/arm64");
    let app = App::new(locate(&exe).unwrap(), "app".into()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match rt.block_on(app.run(RunOptions::default())) {
        Err(e @ AppError::WrongHost { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("packed for linux/arm64 hosts; this host is linux/amd64"),
                "{msg}"
            );
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a pack for arm64 hosts ran"),
    }
    // Inspecting it is fine.
    assert_eq!(app.info().unwrap().manifest["host_platform"], "linux/arm64");
}

#[test]
fn an_executable_without_a_pack_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("lonely");
    std::fs::write(&exe, b"\x7fELF no payload here").unwrap();
    match locate(&exe) {
        Err(e @ AppError::NoPayload { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("no machine is packed into") && msg.contains("lonely.smolmachine"),
                "{msg}"
            );
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("found a pack that is not there"),
    }
}
