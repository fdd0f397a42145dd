//! Outlier-token tracing (OTT) is not implemented in the CUDA kernels: the backend reports
//! [`Capability::Unsupported`] for key operations on traced configurations (so conformance
//! runs skip them with the reason) and the shared argument checks return
//! [`Error::Unsupported`]. Value blocks do not depend on tracing and stay supported.

use vidkv_core::backend::AttentionArgs;
use vidkv_core::{
    Capability, Codec, DType, Error, GroupSize, HeadDim, Operation, QuantConfig, Scheme,
};
use vidkv_cuda::plan;

fn codec(s: Scheme, slots: u8) -> Codec {
    Codec::new(QuantConfig {
        traced_tokens: slots,
        ..s.config(HeadDim::new(64).unwrap(), GroupSize::G32)
    })
    .unwrap()
}

#[test]
fn traced_key_operations_are_unsupported() {
    for c in [codec(Scheme::Ott2, 1), codec(Scheme::Vidkv, 2)] {
        for op in [
            Operation::EncodeKeys,
            Operation::DecodeKeys,
            Operation::Attend,
        ] {
            assert!(matches!(
                plan::capability(op, &c),
                Capability::Unsupported(r) if r.contains("tracing")
            ));
        }
        for op in [
            Operation::EncodeValues,
            Operation::DecodeValues,
            Operation::EncodeValuesMasked,
        ] {
            assert_eq!(plan::capability(op, &c), Capability::Supported);
        }
        let kb = c.key_block_bytes();
        let r = plan::check_encode(&c, true, DType::F16, 32, 32 * 64 * 2, kb, None);
        assert!(matches!(r, Err(Error::Unsupported { .. })), "{r:?}");
        let r = plan::check_decode(&c, true, kb, 1, 32 * 64 * 4);
        assert!(matches!(r, Err(Error::Unsupported { .. })), "{r:?}");
        let vb = c.value_block_bytes();
        plan::check_encode(&c, false, DType::F16, 32, 32 * 64 * 2, vb, None).unwrap();
        let (q, mut out) = (vec![0u8; 64 * 4], vec![0u8; 64 * 4]);
        let (keys, values) = (vec![0u8; kb], vec![0u8; vb]);
        let args = AttentionArgs {
            queries: &q,
            query_heads: 1,
            scale: 0.125,
            key_blocks: &keys,
            value_blocks: &values,
            blocks: 1,
            salient: None,
            sinks: None,
            residual: None,
            lender: None,
            out: &mut out,
        };
        let r = plan::attention_jobs(&c, &args, &|b: &Vec<u8>| (0, b.len()));
        assert!(matches!(r, Err(Error::Unsupported { .. })), "{r:?}");
    }
    // Untraced configurations are unaffected.
    let c = codec(Scheme::Kivi2, 0);
    assert_eq!(
        plan::capability(Operation::Attend, &c),
        Capability::Supported
    );
}
