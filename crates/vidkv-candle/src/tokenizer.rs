//! SmolLM2's tokenizer, built from the GGUF metadata (vocabulary and merges) with the
//! `tokenizers` crate. Nothing is downloaded.
//!
//! candle's `TokenizerFromGguf` reads the BPE model; its generic GPT-2 pipeline adds a prefix
//! space, which SmolLM2 does not. SmolLM2's `tokenizer.json` pre-tokenizes with individual digits
//! then byte-level BPE without a prefix space, and adds no BOS; that pipeline is set here.

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{PostProcessorWrapper, Tokenizer};

use crate::error::{Error, Result};

/// Text ↔ token ids for a GGUF model of the SmolLM family.
#[derive(Debug)]
pub struct GgufTokenizer {
    inner: Tokenizer,
}

fn wrap(e: impl std::fmt::Display) -> Error {
    Error::Config(format!("tokenizer: {e}"))
}

impl GgufTokenizer {
    /// Builds the tokenizer from GGUF metadata.
    pub fn from_gguf(ct: &Content) -> Result<Self> {
        let mut inner = Tokenizer::from_gguf(ct)?;
        let pre = Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ]);
        inner.with_pre_tokenizer(Some(pre));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        inner.with_post_processor(None::<PostProcessorWrapper>);
        Ok(Self { inner })
    }

    /// Token ids of `text` (no BOS; special tokens such as `<|im_start|>` are recognised).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(text, false)
            .map_err(wrap)?
            .get_ids()
            .to_vec())
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(wrap)
    }

    /// The id of a token string, e.g. `<|im_end|>`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}
