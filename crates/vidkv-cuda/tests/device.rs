//! Device tests: they need a CUDA device and say so visibly when there is none.
#![cfg(feature = "cuda")]

use vidkv_core::{
    Capability, Codec, DType, Error, GroupSize, HeadDim, HeadTensor, KvQuantBackend, Operation,
    Scheme,
};
use vidkv_cuda::CudaBackend;

const OPERATIONS: [Operation; 5] = [
    Operation::EncodeKeys,
    Operation::DecodeKeys,
    Operation::EncodeValues,
    Operation::DecodeValues,
    Operation::Attend,
];

/// The backend, or `None` after printing why the device tests are skipped.
fn backend() -> Option<CudaBackend> {
    match CudaBackend::new() {
        Ok(backend) => Some(backend),
        Err(e) => {
            assert!(
                matches!(
                    e,
                    Error::Backend {
                        backend: "cuda",
                        ..
                    }
                ),
                "unexpected error kind: {e:?}"
            );
            eprintln!("no CUDA device: skipped ({e})");
            None
        }
    }
}

#[test]
fn device_buffers_and_capabilities() {
    let Some(backend) = backend() else { return };
    eprintln!(
        "CUDA device: {}",
        backend.device_name().unwrap_or_else(|e| e.to_string())
    );
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

    // No kernels yet: every operation is reported unsupported, and calling one says so.
    let head_dim = HeadDim::new(64).unwrap();
    let group = GroupSize::new(32).unwrap();
    for scheme in Scheme::ALL {
        let codec = Codec::new(scheme.config(head_dim, group)).unwrap();
        for op in OPERATIONS {
            assert!(
                matches!(backend.capability(op, &codec), Capability::Unsupported(_)),
                "{} {}",
                scheme.name(),
                op.name()
            );
        }
        let input = backend.upload(&vec![0u8; 32 * 64 * 2]).unwrap();
        let mut out = backend.alloc(codec.value_block_bytes()).unwrap();
        let tensor = HeadTensor {
            data: &input,
            dtype: DType::F16,
            tokens: 32,
        };
        let err = backend
            .encode_values(&codec, tensor, &mut out)
            .expect_err("encode_values has no kernel");
        assert!(
            matches!(
                err,
                Error::Unsupported {
                    backend: "cuda",
                    operation: "encode_values",
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
