//! Reading stubs: the ELF image is kept, an old payload is stripped, other CPUs are refused.

use smolvm_pack::stub::{StubError, read_stub, write_executable};

/// A minimal ELF64 header (no program or section headers) for machine `e_machine`.
fn elf(e_machine: u16, extra: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 64];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = 2; // 64-bit
    h[5] = 1; // little-endian
    h[6] = 1; // version
    h[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    h[18..20].copy_from_slice(&e_machine.to_le_bytes());
    h[20..24].copy_from_slice(&1u32.to_le_bytes());
    h[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    h.extend_from_slice(extra);
    h
}

#[test]
fn the_stub_of_this_build_reads_back_whole_and_a_payload_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    // This test's own executable is a real x86_64 ELF.
    let me = std::env::current_exe().unwrap();
    let stub = read_stub(&me).unwrap();
    assert_eq!(
        stub.bytes.len() as u64,
        std::fs::metadata(&me).unwrap().len()
    );
    assert_eq!(stub.stripped, 0);

    // Append a fake payload, then read the result as a stub again: the payload goes.
    let payload = dir.path().join("payload");
    std::fs::write(&payload, b"not a real pack, only bytes after the image").unwrap();
    let exe = dir.path().join("packed");
    let len = write_executable(&stub, Some(&payload), &exe).unwrap();
    assert_eq!(len, std::fs::metadata(&exe).unwrap().len());
    let again = read_stub(&exe).unwrap();
    assert_eq!(again.bytes, stub.bytes, "the old payload was not stripped");
    assert!(again.stripped > 0);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&exe).unwrap().permissions().mode() & 0o777,
        0o755
    );
    // The payload starts on a 4 KiB boundary, so its sections stay aligned.
    let bytes = std::fs::read(&exe).unwrap();
    let start = bytes.len() - std::fs::metadata(&payload).unwrap().len() as usize;
    assert_eq!(start % 4096, 0);
    assert!(bytes[stub.bytes.len()..start].iter().all(|&b| b == 0));
}

#[test]
fn stubs_for_other_cpus_and_non_elf_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let arm = dir.path().join("arm64-stub");
    std::fs::write(&arm, elf(183, &[])).unwrap(); // EM_AARCH64
    match read_stub(&arm) {
        Err(e @ StubError::WrongPlatform { .. }) => {
            assert!(e.to_string().contains("need an x86_64 stub"), "{e}")
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("an aarch64 stub was accepted"),
    }
    let text = dir.path().join("script");
    std::fs::write(&text, b"#!/bin/sh\necho not elf\n").unwrap();
    match read_stub(&text) {
        Err(e @ StubError::NotElf { .. }) => {
            assert!(e.to_string().contains("is not a smolvm stub"), "{e}")
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a script was accepted as a stub"),
    }
}
