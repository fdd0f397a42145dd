//! Shared test code: a [`KvQuantBackend`] that runs the CUDA kernels through the CPU warp
//! emulator (`tools/kernel-emu`), and checks generic over any backend.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use vidkv_core::backend::AttentionArgs;
use vidkv_core::cache::{CacheConfig, KvCache, Salient};
use vidkv_core::{
    Capability, ChannelMask, Codec, Error, GroupSize, HeadDim, HeadTensor, KeyScheme,
    KvQuantBackend, LaneRule, MixedKeys, Operation, OutlierScope, Result, Scheme, Transform,
};
use vidkv_cpu::ScalarBackend;
use vidkv_cuda::params::ERR_SLOTS;
use vidkv_cuda::plan::{self, EncodeAddrs, Launch};

/// Where the emulator maps its fake device memory (tools/kernel-emu/harness.cpp).
const ARENA_BASE: u64 = 0x1000_0000_0000;
/// SMs the emulated device reports (only shapes the attention plan: with 66, a long single job
/// gets more than 8 splits and the separate merge kernel runs, as at batch 1 on an H200).
const EMU_SMS: usize = 66;

/// Fake device memory: buffers at fixed addresses.
#[derive(Debug, Default)]
pub struct Arena {
    bytes: Vec<u8>,
}

impl Arena {
    pub fn alloc(&mut self, len: usize) -> u64 {
        let start = self.bytes.len().div_ceil(256) * 256;
        self.bytes.resize(start + len.max(1), 0);
        ARENA_BASE + start as u64
    }

    pub fn put(&mut self, data: &[u8]) -> u64 {
        let a = self.alloc(data.len());
        self.slice_mut(a, data.len()).copy_from_slice(data);
        a
    }

    pub fn slice(&self, addr: u64, len: usize) -> &[u8] {
        let o = (addr - ARENA_BASE) as usize;
        &self.bytes[o..o + len]
    }

    pub fn slice_mut(&mut self, addr: u64, len: usize) -> &mut [u8] {
        let o = (addr - ARENA_BASE) as usize;
        &mut self.bytes[o..o + len]
    }
}

/// Runs launches in the emulator.
#[derive(Debug, Clone)]
pub struct EmuBackend {
    harness: PathBuf,
}

fn u64s(b: &[u8]) -> Vec<u64> {
    b.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

static RUNS: AtomicUsize = AtomicUsize::new(0);

impl EmuBackend {
    /// The emulator named by `VIDKV_EMU_HARNESS` (built by `tools/kernel-emu/build.sh`), if any.
    pub fn from_env() -> Option<Self> {
        let path = PathBuf::from(std::env::var_os("VIDKV_EMU_HARNESS")?);
        path.exists().then_some(Self { harness: path })
    }

    /// Runs `launches` on `arena` (in order) and returns the memory afterwards.
    pub fn run(&self, arena: Arena, launches: &[Launch]) -> Arena {
        let n = RUNS.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("vidkv-emu-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("arena.bin"), &arena.bytes).unwrap();
        let mut list = String::new();
        for (i, l) in launches.iter().enumerate() {
            std::fs::write(dir.join(format!("p{i}.bin")), &l.params).unwrap();
            list += &format!(
                "{} {} {} {} p{i}.bin\n",
                l.kernel.name(),
                l.grid.0,
                l.grid.1,
                l.kernel.threads()
            );
        }
        std::fs::write(dir.join("launches"), list).unwrap();
        let status = Command::new(&self.harness).arg(&dir).status().unwrap();
        assert!(status.success(), "emulator failed on {}", dir.display());
        let bytes = std::fs::read(dir.join("arena.out")).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        Arena { bytes }
    }

    fn encode(
        &self,
        codec: &Codec,
        keys: bool,
        input: HeadTensor<'_, Vec<u8>>,
        outliers: Option<&ChannelMask>,
        excluded: Option<&[u8]>,
        out: &mut [u8],
    ) -> Result<()> {
        let blocks = plan::check_encode(
            codec,
            keys,
            input.dtype,
            input.tokens,
            input.data.len(),
            out.len(),
            outliers,
        )?;
        if let Some(m) = excluded
            && m.len() != blocks * codec.group() / 8
        {
            return Err(plan::short(
                "excluded-token masks (G/8 bytes per block)",
                blocks * codec.group() / 8,
                m.len(),
            ));
        }
        if blocks == 0 {
            return Ok(());
        }
        let mut a = Arena::default();
        let addrs = EncodeAddrs {
            input: a.put(input.data),
            out: a.alloc(out.len()),
            fixed_mask: match (keys, outliers) {
                (true, Some(m)) => a.put(bytemuck::cast_slice(&m.words)),
                _ => 0,
            },
            excluded: excluded.map_or(0, |m| a.put(m)),
            twiddles: a.put(bytemuck::cast_slice(&plan::twiddles(plan::lanes(codec)))),
            errors: a.put(bytemuck::cast_slice(&[u64::MAX; ERR_SLOTS])),
        };
        let a = self.run(
            a,
            &[plan::encode_launch(codec, keys, input.dtype, blocks, addrs)],
        );
        let slots = u64s(a.slice(addrs.errors, 8 * ERR_SLOTS));
        plan::slot_error(&slots)?;
        let n = out.len();
        out.copy_from_slice(a.slice(addrs.out, n));
        Ok(())
    }

    fn decode(
        &self,
        codec: &Codec,
        keys: bool,
        encoded: &[u8],
        blocks: usize,
        out: &mut [u8],
    ) -> Result<()> {
        plan::check_decode(codec, keys, encoded.len(), blocks, out.len())?;
        if blocks == 0 {
            return Ok(());
        }
        let mut a = Arena::default();
        let enc = a.put(encoded);
        let o = a.alloc(out.len());
        let tw = a.put(bytemuck::cast_slice(&plan::twiddles(plan::lanes(codec))));
        let err = a.put(bytemuck::cast_slice(&[u64::MAX; ERR_SLOTS]));
        let a = self.run(
            a,
            &[plan::decode_launch(codec, keys, blocks, enc, o, tw, err)],
        );
        let slots = u64s(a.slice(err, 8 * ERR_SLOTS));
        plan::slot_error(&slots)?;
        let n = out.len();
        out.copy_from_slice(a.slice(o, n));
        Ok(())
    }
}

impl KvQuantBackend for EmuBackend {
    type Buffer = Vec<u8>;

    fn name(&self) -> &'static str {
        "cuda-emu"
    }

    fn capability(&self, op: Operation, codec: &Codec) -> Capability {
        match plan::unsupported(op, codec) {
            Some(reason) => Capability::Unsupported(reason),
            None => Capability::Supported,
        }
    }

    fn upload(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        Ok(bytes.to_vec())
    }

    fn download(&self, buffer: &Vec<u8>) -> Result<Vec<u8>> {
        Ok(buffer.clone())
    }

    fn alloc(&self, bytes: usize) -> Result<Vec<u8>> {
        Ok(vec![0; bytes])
    }

    fn encode_keys(
        &self,
        codec: &Codec,
        input: HeadTensor<'_, Vec<u8>>,
        outliers: Option<&ChannelMask>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        self.encode(codec, true, input, outliers, None, out)
    }

    fn decode_keys(
        &self,
        codec: &Codec,
        encoded: &Vec<u8>,
        blocks: usize,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        self.decode(codec, true, encoded, blocks, out)
    }

    fn encode_values(
        &self,
        codec: &Codec,
        input: HeadTensor<'_, Vec<u8>>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        self.encode(codec, false, input, None, None, out)
    }

    fn decode_values(
        &self,
        codec: &Codec,
        encoded: &Vec<u8>,
        blocks: usize,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        self.decode(codec, false, encoded, blocks, out)
    }

    fn encode_values_masked(
        &self,
        codec: &Codec,
        input: HeadTensor<'_, Vec<u8>>,
        excluded: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        self.encode(codec, false, input, None, Some(excluded), out)
    }

    fn copy_bytes(
        &self,
        src: &Vec<u8>,
        src_offset: usize,
        dst: &mut Vec<u8>,
        dst_offset: usize,
        len: usize,
    ) -> Result<()> {
        if src_offset + len > src.len() || dst_offset + len > dst.len() {
            return Err(plan::short("copy bytes", src_offset + len, src.len()));
        }
        dst[dst_offset..dst_offset + len].copy_from_slice(&src[src_offset..src_offset + len]);
        Ok(())
    }

    fn write_bytes(&self, dst: &mut Vec<u8>, offset: usize, bytes: &[u8]) -> Result<()> {
        if offset + bytes.len() > dst.len() {
            return Err(plan::short("write bytes", offset + bytes.len(), dst.len()));
        }
        dst[offset..offset + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }

    fn attend(&self, codec: &Codec, args: AttentionArgs<'_, Vec<u8>>) -> Result<()> {
        self.attend_batch(codec, vec![args])
    }

    fn attend_batch(&self, codec: &Codec, mut jobs: Vec<AttentionArgs<'_, Vec<u8>>>) -> Result<()> {
        let arena = RefCell::new(Arena::default());
        let placed: RefCell<HashMap<usize, u64>> = RefCell::new(HashMap::new());
        let info = |b: &Vec<u8>| -> (u64, usize) {
            if b.is_empty() {
                return (0, 0);
            }
            let key = b.as_ptr() as usize;
            let mut p = placed.borrow_mut();
            let addr = *p.entry(key).or_insert_with(|| arena.borrow_mut().put(b));
            (addr, b.len())
        };
        let mut table = Vec::new();
        let mut outs = Vec::new();
        for j in &jobs {
            let kj = plan::attention_jobs(codec, j, &info)?;
            outs.push(info(&*j.out).0);
            table.extend(kj);
        }
        if table.is_empty() {
            return Ok(());
        }
        let mut a = arena.into_inner();
        let shapes: Vec<plan::JobShape> = table
            .iter()
            .map(|j| plan::JobShape {
                blocks: j.blocks as usize,
                query_heads: j.query_heads as usize,
                salient: j.sal_masks != 0,
            })
            .collect();
        let p = plan::plan_attention(codec, &shapes, EMU_SMS, true);
        let jobs_addr = a.put(bytemuck::cast_slice(&table));
        let work = a.alloc(p.work_floats * 4);
        let counters = a.alloc(table.len() * 4);
        let fmat = a.put(bytemuck::cast_slice(&plan::adjoint_matrix(codec)));
        let tw = a.put(bytemuck::cast_slice(&plan::twiddles(plan::lanes(codec))));
        let params = plan::attn_params(codec, &p, table.len(), jobs_addr, work, counters, fmat, tw);
        let a = self.run(a, &plan::attn_launches(&p, table.len(), &params));
        for (j, addr) in jobs.iter_mut().zip(outs) {
            let n = j.out.len();
            j.out.copy_from_slice(a.slice(addr, n));
        }
        Ok(())
    }
}

/// A deterministic generator of realistic K/V: a few key channels of large magnitude.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    pub fn normal(&mut self) -> f32 {
        (0..4).map(|_| self.uniform()).sum::<f32>() - 2.0
    }

    /// `[heads, tokens, d]` keys with outlier channels.
    pub fn keys(&mut self, heads: usize, tokens: usize, d: usize) -> Vec<f32> {
        let big: Vec<f32> = (0..d).map(|c| if c % 7 == 3 { 6.0 } else { 1.0 }).collect();
        (0..heads * tokens * d)
            .map(|i| self.normal() * big[i % d] + if i % d == 5 { 2.0 } else { 0.0 })
            .collect()
    }

    pub fn values(&mut self, heads: usize, tokens: usize, d: usize) -> Vec<f32> {
        (0..heads * tokens * d).map(|_| self.normal()).collect()
    }
}

pub fn codec(scheme: Scheme, d: usize, g: usize) -> Codec {
    Codec::new(scheme.config(HeadDim::new(d).unwrap(), GroupSize::new(g).unwrap())).unwrap()
}

/// The vidkv preset with another transform / lane rule / scope.
pub fn mixed(
    d: usize,
    g: usize,
    transform: Transform,
    rule: LaneRule,
    scope: OutlierScope,
) -> Codec {
    let mut cfg = Scheme::Vidkv.config(HeadDim::new(d).unwrap(), GroupSize::new(g).unwrap());
    cfg.keys = KeyScheme::Mixed(MixedKeys {
        transform,
        lane_rule: rule,
        scope,
        ..MixedKeys::DEFAULT
    });
    Codec::new(cfg).unwrap()
}

/// One streaming-cache scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub codec: Codec,
    pub kv: usize,
    pub qh: usize,
    pub residual: usize,
    pub sinks: usize,
    /// Prefill length of each sequence.
    pub lens: Vec<usize>,
    /// Tokens appended one by one afterwards.
    pub appends: usize,
    /// Mark every 5th token salient.
    pub salient: bool,
}

fn rel_err(got: &[f32], want: &[f32], d: usize) -> f64 {
    let mut worst = 0.0f64;
    for (g, w) in got.chunks(d).zip(want.chunks(d)) {
        let scale = w.iter().fold(1e-3f64, |m, v| m.max(f64::from(v.abs())));
        for (a, b) in g.iter().zip(w) {
            let e = (f64::from(*a) - f64::from(*b)).abs() / scale;
            worst = if e.is_nan() {
                f64::INFINITY
            } else {
                worst.max(e)
            };
        }
    }
    worst
}

/// Runs a scenario on `backend` and on the scalar backend; returns the largest relative
/// difference of the attention outputs (per query head, relative to its largest element) and
/// whether the blocks agreed byte for byte.
pub fn scenario_error<B: KvQuantBackend>(backend: B, s: &Scenario, seed: u64) -> (f64, bool) {
    let d = s.codec.head_dim();
    let mut cfg = CacheConfig::new(s.codec, s.kv, s.qh);
    cfg.residual = s.residual;
    cfg.sinks = s.sinks;
    let mut gpu = KvCache::new(backend, cfg).expect("cache on backend");
    let mut cpu = KvCache::new(ScalarBackend, cfg).expect("scalar cache");
    let mut rng = Rng::new(seed);
    for &len in &s.lens {
        let (a, b) = (gpu.add_sequence().unwrap(), cpu.add_sequence().unwrap());
        assert_eq!(a, b);
        let k = rng.keys(s.kv, len, d);
        let v = rng.values(s.kv, len, d);
        let sal: Vec<usize> = if s.salient {
            (2..len).step_by(5).collect()
        } else {
            Vec::new()
        };
        let which = if s.salient {
            Salient::Indices(&sal)
        } else {
            Salient::None
        };
        gpu.prefill(a, &k, &v, which).expect("prefill on backend");
        cpu.prefill(b, &k, &v, which).unwrap();
    }
    for t in 0..s.appends {
        for seq in 0..s.lens.len() {
            let k = rng.keys(s.kv, 1, d);
            let v = rng.values(s.kv, 1, d);
            let sal = s.salient && t % 3 == 1;
            gpu.append_token(seq, &k, &v, sal)
                .expect("append on backend");
            cpu.append_token(seq, &k, &v, sal).unwrap();
        }
    }
    let mut same = true;
    for seq in 0..s.lens.len() {
        for h in 0..s.kv {
            same &= gpu.key_blocks(seq, h).unwrap() == cpu.key_blocks(seq, h).unwrap();
            same &= gpu.value_blocks(seq, h).unwrap() == cpu.value_blocks(seq, h).unwrap();
        }
    }
    let n = s.lens.len() * s.qh * d;
    let q: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
    let (mut got, mut want) = (vec![0.0f32; n], vec![0.0f32; n]);
    gpu.attend_all(&q, &mut got).expect("attention on backend");
    cpu.attend_all(&q, &mut want).unwrap();
    (rel_err(&got, &want, d), same)
}

/// The scenarios every backend runs: the tensor-core configuration (D 128, G 32, GQA 7) with each
/// transform and lane rule, the generic kernel on other shapes and schemes, salient tokens,
/// sinks, ring wrap-around, empty sequences.
pub fn scenarios() -> Vec<(&'static str, Scenario)> {
    let base = Scenario {
        codec: codec(Scheme::Vidkv, 128, 32),
        kv: 2,
        qh: 14,
        residual: 64,
        sinks: 1,
        lens: vec![300, 97, 0, 40],
        appends: 40,
        salient: false,
    };
    vec![
        ("vidkv-d128-g32 (tensor cores, Fft)", base.clone()),
        (
            "vidkv-d128 one long sequence (tensor cores, 10 splits, merge kernel)",
            Scenario {
                kv: 1,
                qh: 7,
                lens: vec![2400],
                appends: 2,
                ..base.clone()
            },
        ),
        (
            "hadamard-d128 (tensor cores)",
            Scenario {
                codec: mixed(
                    128,
                    32,
                    Transform::Hadamard,
                    LaneRule::Symmetric,
                    OutlierScope::Block,
                ),
                lens: vec![200, 33],
                appends: 5,
                ..base.clone()
            },
        ),
        (
            "identity-d128 (tensor cores)",
            Scenario {
                codec: mixed(
                    128,
                    32,
                    Transform::Identity,
                    LaneRule::Symmetric,
                    OutlierScope::Block,
                ),
                lens: vec![160],
                appends: 3,
                ..base.clone()
            },
        ),
        (
            "vidkv-paper-d128 (tensor cores, PaperCompat, layer scope)",
            Scenario {
                codec: codec(Scheme::VidkvPaper, 128, 32),
                lens: vec![230, 70],
                appends: 3,
                ..base.clone()
            },
        ),
        (
            "vidkv-d128 GQA 4 + salient (generic kernel)",
            Scenario {
                qh: 8,
                lens: vec![260, 90],
                appends: 12,
                salient: true,
                ..base.clone()
            },
        ),
        (
            "vidkv-d64-g64 (generic kernel)",
            Scenario {
                codec: codec(Scheme::Vidkv, 64, 64),
                kv: 1,
                qh: 3,
                lens: vec![300, 10],
                appends: 5,
                ..base.clone()
            },
        ),
        (
            "kivi2-d80",
            Scenario {
                codec: codec(Scheme::Kivi2, 80, 32),
                kv: 2,
                qh: 2,
                lens: vec![150],
                appends: 3,
                ..base.clone()
            },
        ),
        (
            "kivi4-d64 GQA 10 (two kernel jobs per head)",
            Scenario {
                codec: codec(Scheme::Kivi4, 64, 32),
                kv: 1,
                qh: 10,
                lens: vec![128],
                appends: 2,
                ..base.clone()
            },
        ),
        (
            "pc2-d16-g128",
            Scenario {
                codec: codec(Scheme::Pc2, 16, 128),
                kv: 2,
                qh: 4,
                residual: 0,
                sinks: 0,
                lens: vec![400],
                appends: 2,
                salient: false,
            },
        ),
    ]
}

/// Tolerance of a scenario's attention output against the scalar backend.
pub fn tolerance(codec: &Codec) -> f64 {
    if plan::tensor_core_codec(codec).is_some() {
        // f16 queries, weights and probabilities on tensor cores (as fp16 FlashAttention).
        1e-2
    } else {
        2e-3
    }
}

/// Runs every scenario on a backend made by `make`; panics on a failure.
pub fn check_scenarios<B: KvQuantBackend>(make: impl Fn() -> B) {
    for (name, s) in scenarios() {
        let (err, same) = scenario_error(make(), &s, 7);
        eprintln!("{name}: attention max rel diff {err:.2e} vs scalar; blocks byte-equal: {same}");
        assert!(err <= tolerance(&s.codec), "{name}: {err:.3e}");
    }
}

/// An error for backends that report Unsupported where they should not.
pub fn unexpected(e: Error) -> ! {
    panic!("unexpected error: {e}")
}
