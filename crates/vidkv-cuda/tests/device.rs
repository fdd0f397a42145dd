//! Device tests: the conformance suite, the streaming-cache scenarios and buffer plumbing on a
//! real GPU. Without a device they say "no CUDA device: skipped" and pass.
#![cfg(feature = "cuda")]

mod common;

use vidkv_core::{Error, KvQuantBackend};
use vidkv_cuda::CudaBackend;

/// The backend; `Err` (a visible skip) only when there is no device. A device that is present
/// but fails to start the backend fails the test.
fn cuda() -> Result<CudaBackend, Error> {
    match CudaBackend::new() {
        Ok(b) => Ok(b),
        Err(e) if CudaBackend::is_no_device(&e) => Err(e),
        Err(e) => panic!("a CUDA device is present but the backend failed to start: {e}"),
    }
}

/// The backend, or a visible skip of the calling test.
macro_rules! cuda_or_skip {
    () => {
        match cuda() {
            Ok(b) => b,
            Err(e) => {
                eprintln!("no CUDA device: skipped ({e})");
                return;
            }
        }
    };
}

conformance::suite!(cuda, optional cuda());

#[test]
fn cuda_streaming_cache_scenarios() {
    let backend = cuda_or_skip!();
    eprintln!(
        "CUDA device: {}",
        backend.device_name().unwrap_or_else(|e| e.to_string())
    );
    common::check_scenarios(|| &backend);
}

#[test]
fn cuda_device_buffers() {
    let backend = cuda_or_skip!();
    assert_eq!(backend.name(), "cuda");
    // Bytes round-trip through device memory, including the empty buffer.
    for len in [0usize, 1, 7, 4096, 1 << 20] {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
        let buffer = backend.upload(&bytes).expect("upload");
        assert_eq!(buffer.len(), len);
        assert_eq!(backend.download(&buffer).expect("download"), bytes);
    }
    let zeroed = backend.alloc(1000).expect("alloc");
    assert_eq!(
        backend.download(&zeroed).expect("download"),
        vec![0u8; 1000]
    );
    // Device-to-device and host-to-device pieces.
    let src = backend.upload(&[1, 2, 3, 4, 5]).unwrap();
    let mut dst = backend.alloc(8).unwrap();
    backend.copy_bytes(&src, 1, &mut dst, 2, 3).unwrap();
    backend.write_bytes(&mut dst, 6, &[9, 9]).unwrap();
    assert_eq!(backend.download(&dst).unwrap(), [0, 0, 2, 3, 4, 0, 9, 9]);
    assert!(backend.copy_bytes(&src, 4, &mut dst, 0, 2).is_err());
    assert!(backend.write_bytes(&mut dst, 7, &[1, 2]).is_err());
}
