//! Decode attention split over threads: the streaming cache's fused jobs and the dense f16/f32
//! baselines.
//!
//! The cache ([`KvCache`], in `vidkv-core`, `no_std`) produces one job per (sequence, KV head);
//! here they are spread over `std::thread::scope` threads, each running its share through the
//! backend's [`KvQuantBackend::attend_batch`]. Jobs are balanced by their token counts.

use half::f16;
use vidkv_core::backend::AttentionArgs;
use vidkv_core::cache::KvCache;
use vidkv_core::{Codec, KvQuantBackend};

use crate::error::Result;

/// Fused decode attention for `seqs` of `cache` (`q`, `out`: `[seqs.len(), query_heads, D]`) on
/// `threads` threads (1: the calling thread only).
pub fn attend_threaded<B>(
    cache: &KvCache<B>,
    seqs: &[usize],
    q: &[f32],
    out: &mut [f32],
    threads: usize,
) -> Result<()>
where
    B: KvQuantBackend + Sync,
    B::Buffer: Send + Sync,
{
    let group = cache.codec().group();
    cache.attend_with(seqs, q, out, |backend, codec, jobs| {
        run_jobs(backend, codec, jobs, threads, group)
    })?;
    Ok(())
}

/// Runs attention jobs on up to `threads` threads, the largest jobs first onto the least loaded
/// thread.
fn run_jobs<'a, B>(
    backend: &'a B,
    codec: &'a Codec,
    mut jobs: Vec<AttentionArgs<'a, B::Buffer>>,
    threads: usize,
    group: usize,
) -> vidkv_core::Result<()>
where
    B: KvQuantBackend + Sync,
    B::Buffer: Send + Sync,
{
    let threads = threads.clamp(1, jobs.len().max(1));
    if threads == 1 {
        return backend.attend_batch(codec, jobs);
    }
    let weight = |j: &AttentionArgs<'_, B::Buffer>| {
        j.blocks * group
            + j.sinks.as_ref().map_or(0, |r| r.len)
            + j.residual.as_ref().map_or(0, |r| r.len)
    };
    jobs.sort_by_key(|j| std::cmp::Reverse(weight(j)));
    let mut buckets: Vec<(usize, Vec<AttentionArgs<'a, B::Buffer>>)> =
        (0..threads).map(|_| (0, Vec::new())).collect();
    for job in jobs {
        let w = weight(&job);
        let lightest = buckets
            .iter_mut()
            .min_by_key(|(load, _)| *load)
            .expect("at least one thread");
        lightest.0 += w;
        lightest.1.push(job);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = buckets
            .into_iter()
            .map(|(_, jobs)| s.spawn(move || backend.attend_batch(codec, jobs)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("attention thread panicked"))
            .collect::<vidkv_core::Result<Vec<()>>>()
            .map(drop)
    })
}

/// A dense cache of one sequence: `[kv_heads, tokens, D]` keys and values.
#[derive(Debug, Clone)]
pub enum DenseCache {
    /// f16 elements (the baseline every ratio is against).
    F16 {
        /// Keys.
        keys: Vec<f16>,
        /// Values.
        values: Vec<f16>,
    },
    /// f32 elements.
    F32 {
        /// Keys.
        keys: Vec<f32>,
        /// Values.
        values: Vec<f32>,
    },
}

impl DenseCache {
    /// Bytes one decode step reads.
    pub fn bytes(&self) -> usize {
        match self {
            DenseCache::F16 { keys, values } => (keys.len() + values.len()) * 2,
            DenseCache::F32 { keys, values } => (keys.len() + values.len()) * 4,
        }
    }
}

/// Dense attention baseline over a batch of dense caches (one per sequence) with the same tiles,
/// GQA sharing, online softmax and exponential as the fused kernel: `q`, `out` are
/// `[sequences, query_heads, D]`; jobs (sequence, KV head) are split over `threads`.
pub fn attend_dense(
    caches: &[DenseCache],
    kv_heads: usize,
    head_dim: usize,
    q: &[f32],
    out: &mut [f32],
    threads: usize,
) {
    let query_heads = q.len() / caches.len().max(1) / head_dim;
    let group = query_heads / kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let mut jobs: Vec<(&DenseCache, usize, &[f32], &mut [f32])> = Vec::new();
    for ((cache, qs), os) in caches
        .iter()
        .zip(q.chunks_exact(query_heads * head_dim))
        .zip(out.chunks_exact_mut(query_heads * head_dim))
    {
        for (h, (qh, oh)) in qs
            .chunks_exact(group * head_dim)
            .zip(os.chunks_exact_mut(group * head_dim))
            .enumerate()
        {
            jobs.push((cache, h, qh, oh));
        }
    }
    let run = |(cache, h, qh, oh): (&DenseCache, usize, &[f32], &mut [f32])| match cache {
        DenseCache::F16 { keys, values } => {
            let n = keys.len() / kv_heads;
            vidkv_cpu::attention::attend_dense_f16(
                qh,
                head_dim,
                scale,
                &keys[h * n..][..n],
                &values[h * n..][..n],
                oh,
            )
        }
        DenseCache::F32 { keys, values } => {
            let n = keys.len() / kv_heads;
            vidkv_cpu::attention::attend_dense_f32(
                qh,
                head_dim,
                scale,
                &keys[h * n..][..n],
                &values[h * n..][..n],
                oh,
            )
        }
    };
    let threads = threads.clamp(1, jobs.len().max(1));
    if threads == 1 {
        jobs.into_iter().for_each(run);
        return;
    }
    let mut buckets: Vec<Vec<_>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, job) in jobs.into_iter().enumerate() {
        buckets[i % threads].push(job);
    }
    std::thread::scope(|s| {
        for bucket in buckets {
            s.spawn(move || bucket.into_iter().for_each(run));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use vidkv_core::cache::{CacheConfig, Salient};
    use vidkv_core::{GroupSize, HeadDim, Scheme};

    #[test]
    fn threads_give_the_same_output_as_one_thread() {
        let (kv, qh, d, n) = (4, 28, 64, 500);
        let codec =
            Codec::new(Scheme::Vidkv.config(HeadDim::new(d).unwrap(), GroupSize::G32)).unwrap();
        let mut cache =
            KvCache::new(crate::ScalarBackend, CacheConfig::new(codec, kv, qh)).unwrap();
        let x: Vec<f32> = (0..kv * n * d)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        for len in [n, 77] {
            let s = cache.add_sequence().unwrap();
            let k = &x[..kv * len * d];
            cache.prefill(s, k, k, Salient::None).unwrap();
        }
        let q: Vec<f32> = (0..2 * qh * d).map(|i| (i % 13) as f32 / 13.0).collect();
        let (mut one, mut two) = (vec![0.0; q.len()], vec![0.0; q.len()]);
        attend_threaded(&cache, &[0, 1], &q, &mut one, 1).unwrap();
        attend_threaded(&cache, &[0, 1], &q, &mut two, 3).unwrap();
        assert_eq!(one, two);

        let dense: Vec<DenseCache> = [n, 77]
            .iter()
            .map(|&len| DenseCache::F16 {
                keys: x[..kv * len * d]
                    .iter()
                    .map(|&v| f16::from_f32(v))
                    .collect(),
                values: x[..kv * len * d]
                    .iter()
                    .map(|&v| f16::from_f32(v))
                    .collect(),
            })
            .collect();
        let (mut a, mut b) = (vec![0.0; q.len()], vec![0.0; q.len()]);
        attend_dense(&dense, kv, d, &q, &mut a, 1);
        attend_dense(&dense, kv, d, &q, &mut b, 2);
        assert_eq!(a, b);
    }
}
