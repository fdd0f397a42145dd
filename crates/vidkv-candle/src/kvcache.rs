//! [`LayerCache`] over vidkv's own streaming cache, [`vidkv_core::KvCache`]: the packed blocks,
//! residual ring, sinks and layer-scope outlier rule of `vidkv-core`, with the backend's fused
//! decode attention (`ScalarBackend`: vidkv-cpu's lookup-table kernel).

use vidkv_core::{
    CacheConfig, Codec, GroupSize, HeadDim, KvCache, KvQuantBackend, Salient, Scheme, TernaryScale,
    ValueScheme,
};

use std::sync::{Arc, Mutex, MutexGuard};

use crate::cache::{CacheFactory, CacheShape, LayerCache, Streaming};
use crate::error::Result;

/// One layer, one sequence of a [`KvCache`].
#[derive(Debug)]
pub struct VidkvLayer<B: KvQuantBackend<Buffer = Vec<u8>>> {
    cache: KvCache<B>,
    backend_name: &'static str,
}

impl<B: KvQuantBackend<Buffer = Vec<u8>>> VidkvLayer<B> {
    /// An empty single-sequence cache.
    pub fn new(backend: B, config: CacheConfig) -> Result<Self> {
        let backend_name = backend.name();
        let mut cache = KvCache::new(backend, config)?;
        cache.add_sequence()?;
        Ok(Self {
            cache,
            backend_name,
        })
    }

    /// The wrapped cache.
    pub fn inner(&self) -> &KvCache<B> {
        &self.cache
    }
}

impl<B: KvQuantBackend<Buffer = Vec<u8>> + Send> LayerCache for VidkvLayer<B> {
    fn append(&mut self, k: &[f32], v: &[f32], tokens: usize) -> Result<()> {
        if tokens == 1 {
            self.cache.append(0, k, v)?;
        } else {
            self.cache.prefill(0, k, v, Salient::None)?;
        }
        Ok(())
    }

    fn attend(&mut self, q: &[f32], out: &mut [f32]) -> Result<()> {
        Ok(self.cache.attend(0, q, out)?)
    }

    fn tokens(&self) -> usize {
        self.cache.tokens(0)
    }

    fn memory_bytes(&self) -> usize {
        self.cache.memory().total()
    }

    fn dequantized(&self) -> (Vec<f32>, Vec<f32>) {
        // The sequence exists and holds blocks this cache encoded.
        self.cache.dequantize(0).expect("own cache dequantizes")
    }

    fn describe(&self) -> String {
        format!("KvCache fused ({})", self.backend_name)
    }
}

/// Factory of [`VidkvLayer`]s on vidkv-cpu's `ScalarBackend` for a named preset.
#[derive(Debug, Clone, Copy)]
pub struct VidkvFactory {
    /// The preset.
    pub scheme: Scheme,
    /// Replaces the preset's value scheme (e.g. `vidkv-paper` with the γ scale the paper's text
    /// describes instead of the reference code's unit scale); named `<preset>+<values>`.
    pub values: Option<ValueScheme>,
    /// Group size G.
    pub group: GroupSize,
    /// Residual window and sinks.
    pub streaming: Streaming,
}

impl CacheFactory for VidkvFactory {
    fn name(&self) -> String {
        match self.values {
            None => self.scheme.name().into(),
            Some(v) => format!("{}+{}", self.scheme.name(), value_name(v)),
        }
    }

    fn make(&self, _layer: usize, shape: CacheShape) -> Result<Box<dyn LayerCache>> {
        Ok(Box::new(VidkvLayer::new(
            vidkv_cpu::ScalarBackend,
            self.cache_config(shape)?,
        )?))
    }
}

impl VidkvFactory {
    /// The cache configuration of a layer of this shape.
    pub fn cache_config(&self, shape: CacheShape) -> Result<CacheConfig> {
        let mut config = self
            .scheme
            .config(HeadDim::new(shape.head_dim)?, self.group);
        if let Some(v) = self.values {
            config.values = v;
        }
        let codec = Codec::new(config)?;
        let mut config = CacheConfig::new(codec, shape.kv_heads, shape.q_heads);
        config.residual = self.streaming.residual;
        config.sinks = self.streaming.sinks;
        Ok(config)
    }
}

type SharedCache = Arc<Mutex<KvCache<vidkv_cpu::ScalarBackend>>>;

fn locked(c: &SharedCache) -> MutexGuard<'_, KvCache<vidkv_cpu::ScalarBackend>> {
    c.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A layer whose cache the next layer borrows codes from (XQuant cross-layer sharing).
struct LenderLayer {
    cache: SharedCache,
}

impl LayerCache for LenderLayer {
    fn append(&mut self, k: &[f32], v: &[f32], tokens: usize) -> Result<()> {
        let mut c = locked(&self.cache);
        if tokens == 1 {
            c.append(0, k, v)?;
        } else {
            c.prefill(0, k, v, Salient::None)?;
        }
        Ok(())
    }

    fn attend(&mut self, q: &[f32], out: &mut [f32]) -> Result<()> {
        Ok(locked(&self.cache).attend(0, q, out)?)
    }

    fn tokens(&self) -> usize {
        locked(&self.cache).tokens(0)
    }

    fn memory_bytes(&self) -> usize {
        locked(&self.cache).memory().total()
    }

    fn dequantized(&self) -> (Vec<f32>, Vec<f32>) {
        locked(&self.cache)
            .dequantize(0)
            .expect("own cache dequantizes")
    }

    fn describe(&self) -> String {
        "KvCache fused, lends its codes".into()
    }
}

/// A layer that stores only its min/max parameters and attends with its lender's codes.
struct BorrowingLayer {
    cache: KvCache<vidkv_cpu::ScalarBackend>,
    lender: SharedCache,
}

impl LayerCache for BorrowingLayer {
    fn append(&mut self, k: &[f32], v: &[f32], tokens: usize) -> Result<()> {
        if tokens == 1 {
            self.cache.append(0, k, v)?;
        } else {
            self.cache.prefill(0, k, v, Salient::None)?;
        }
        Ok(())
    }

    fn attend(&mut self, q: &[f32], out: &mut [f32]) -> Result<()> {
        Ok(self
            .cache
            .attend_borrowing(&locked(&self.lender), 0, q, out)?)
    }

    fn tokens(&self) -> usize {
        self.cache.tokens(0)
    }

    fn memory_bytes(&self) -> usize {
        self.cache.memory().total()
    }

    fn dequantized(&self) -> (Vec<f32>, Vec<f32>) {
        // The lender is the previous layer, appended before this one at every step.
        self.cache
            .dequantize_borrowing(&locked(&self.lender), 0)
            .expect("lender and borrower hold the same tokens")
    }

    fn describe(&self) -> String {
        "KvCache fused, borrows the previous layer's codes".into()
    }
}

/// [`VidkvFactory`] with XQuant's cross-layer code sharing: from layer `from` on, every odd
/// layer borrows the codes of the layer before it ([`Codec::borrowing`]) and stores only its
/// own min/max parameters. Named `<preset>+share<from>`. Layers must be made in order.
#[derive(Debug)]
pub struct SharingFactory {
    /// The preset and streaming settings.
    pub base: VidkvFactory,
    /// First layer that may borrow.
    pub from: usize,
    lenders: Mutex<Vec<Option<SharedCache>>>,
}

impl SharingFactory {
    /// Sharing on top of `base` from layer `from`; the preset's blocks must be able to borrow.
    pub fn new(base: VidkvFactory, from: usize) -> Result<Self> {
        let shape = CacheShape {
            kv_heads: 1,
            q_heads: 1,
            head_dim: 64,
        };
        base.cache_config(shape)?.codec.borrowing()?;
        Ok(Self {
            base,
            from,
            lenders: Mutex::new(Vec::new()),
        })
    }

    fn borrows(&self, layer: usize) -> bool {
        layer >= self.from && layer % 2 == 1
    }
}

impl CacheFactory for SharingFactory {
    fn name(&self) -> String {
        format!("{}+share{}", self.base.name(), self.from)
    }

    fn make(&self, layer: usize, shape: CacheShape) -> Result<Box<dyn LayerCache>> {
        let config = self.base.cache_config(shape)?;
        let mut lenders = self
            .lenders
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if lenders.len() <= layer {
            lenders.resize(layer + 1, None);
        }
        let lender = layer.checked_sub(1).and_then(|l| lenders[l].clone());
        if let (true, Some(lender)) = (self.borrows(layer), lender) {
            let config = CacheConfig {
                codec: config.codec.borrowing()?,
                ..config
            };
            let mut cache = KvCache::new(vidkv_cpu::ScalarBackend, config)?;
            cache.add_sequence()?;
            return Ok(Box::new(BorrowingLayer { cache, lender }));
        }
        if self.borrows(layer + 1) {
            let mut cache = KvCache::new(vidkv_cpu::ScalarBackend, config)?;
            cache.add_sequence()?;
            let cache = Arc::new(Mutex::new(cache));
            lenders[layer] = Some(cache.clone());
            return Ok(Box::new(LenderLayer { cache }));
        }
        lenders[layer] = None;
        Ok(Box::new(VidkvLayer::new(vidkv_cpu::ScalarBackend, config)?))
    }
}

/// Short name of a value scheme for `<preset>+<values>` names.
pub fn value_name(v: ValueScheme) -> String {
    match v {
        ValueScheme::Ternary {
            scale: TernaryScale::MeanAbs,
        } => "gamma".into(),
        ValueScheme::Ternary {
            scale: TernaryScale::LeastSquares,
        } => "ls".into(),
        ValueScheme::Ternary {
            scale: TernaryScale::Unit,
        } => "unit".into(),
        ValueScheme::PerToken { bits } => format!("tok{}", bits.get()),
        ValueScheme::PerChannel { bits } => format!("ch{}", bits.get()),
    }
}

/// Parses `<preset>` or `<preset>+<values>` (values: `gamma`, `ls`, `unit`).
pub fn parse_scheme(name: &str) -> Option<(Scheme, Option<ValueScheme>)> {
    let (preset, values) = match name.split_once('+') {
        Some((p, v)) => (p, Some(v)),
        None => (name, None),
    };
    let scheme = Scheme::from_name(preset).ok()?;
    let values = match values {
        None => None,
        Some(v) => Some(ValueScheme::Ternary {
            scale: match v {
                "gamma" => TernaryScale::MeanAbs,
                "ls" => TernaryScale::LeastSquares,
                "unit" => TernaryScale::Unit,
                _ => return None,
            },
        }),
    };
    Some((scheme, values))
}
