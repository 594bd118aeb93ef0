//! `bazel-like`: what a Bazel build with a remote cache sends, per action.
//!
//! Bazel (remote cache, no remote execution) does, for each action it wants to run:
//! GetActionResult; on a hit it downloads the outputs (ByteStream Read); on a miss it runs
//! the action locally, then FindMissingBlobs over inputs and outputs, ByteStream Write of
//! what is missing (the outputs: the inputs are usually present already) and
//! UpdateActionResult. One operation here is one such action, so the RPC proportions follow
//! `--hit-ratio` (0.9: a warm CI build) with 2 outputs of `--size` (16 KiB) and 10 inputs per
//! action. The report counts each RPC.

use super::rpc::seed_blobs;
use super::{Clients, OpError, Workload};
use crate::bench::BenchError;
use crate::bench::args::LoadArgs;
use crate::bench::data::{Blob, BlobMaker, Rng};
use crate::digest::Digest;
use crate::proto::reapi::{ActionResult, FindMissingBlobsRequest, OutputFile};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

const OUTPUTS: u64 = 2;
const INPUTS: usize = 10;

#[derive(Default)]
struct RpcCounts {
    get_action_result: AtomicU64,
    find_missing: AtomicU64,
    read: AtomicU64,
    write: AtomicU64,
    update_action_result: AtomicU64,
}

/// The per-action mix.
pub struct BazelLike {
    hit_ratio: f64,
    count: usize,
    outputs: BlobMaker,
    actions: BlobMaker,
    inputs: Vec<Blob>,
    seeded: Vec<(Digest, Vec<Blob>)>,
    next: AtomicU64,
    rpcs: RpcCounts,
}

impl BazelLike {
    /// From `--hit-ratio` (0.9), `--size` (16 KiB per output), `--blobs` (500 seeded actions).
    pub fn new(args: &LoadArgs, seed: u64) -> Self {
        let size = args.size.unwrap_or(16 << 10);
        Self {
            hit_ratio: args.hit_ratio.clamp(0.0, 1.0),
            count: args.blobs.unwrap_or(500).max(1),
            outputs: BlobMaker::new(seed, size),
            actions: BlobMaker::new(seed ^ 0xba2e1, 32),
            inputs: (0..1000)
                .map(|n| BlobMaker::new(seed ^ 0x1, 4096).blob(n))
                .collect(),
            seeded: Vec::new(),
            next: AtomicU64::new(0),
            rpcs: RpcCounts::default(),
        }
    }

    fn result(outputs: &[Blob]) -> ActionResult {
        ActionResult {
            output_files: outputs
                .iter()
                .enumerate()
                .map(|(i, b)| OutputFile {
                    path: format!("bazel-out/k8-fastbuild/bin/out{i}"),
                    digest: Some(b.digest.to_proto()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn action(&self, n: u64) -> (Digest, Vec<Blob>) {
        let outs = (0..OUTPUTS)
            .map(|k| self.outputs.blob(n * OUTPUTS + k))
            .collect();
        (self.actions.blob(n).digest, outs)
    }

    async fn hit(&self, c: &Clients, w: usize, rng: &mut Rng) -> Result<u64, OpError> {
        let (action, outs) = &self.seeded[rng.below(self.seeded.len())];
        self.rpcs.get_action_result.fetch_add(1, Ordering::Relaxed);
        let got = super::ac::get(c, w, action)
            .await?
            .ok_or_else(|| OpError::Verify("a stored action result was NOT_FOUND".into()))?;
        super::ac::check_result(&got, &Self::result(outs))?;
        let mut bytes = 0;
        for b in outs {
            self.rpcs.read.fetch_add(1, Ordering::Relaxed);
            bytes += c.bytestream_read(w, b).await?;
        }
        Ok(bytes)
    }

    async fn miss(&self, c: &Clients, w: usize, rng: &mut Rng) -> Result<u64, OpError> {
        // Fresh action numbers start past the seeded ones.
        let n = self.count as u64 + self.next.fetch_add(1, Ordering::Relaxed);
        let (action, outs) = self.action(n);
        self.rpcs.get_action_result.fetch_add(1, Ordering::Relaxed);
        if super::ac::get(c, w, &action).await?.is_some() {
            return Err(OpError::Verify("a fresh action returned a result".into()));
        }
        let mut digests: Vec<_> = (0..INPUTS)
            .map(|_| self.inputs[rng.below(self.inputs.len())].digest.to_proto())
            .collect();
        digests.extend(outs.iter().map(|b| b.digest.to_proto()));
        self.rpcs.find_missing.fetch_add(1, Ordering::Relaxed);
        let missing: HashSet<String> = c
            .cas(w)
            .find_missing_blobs(FindMissingBlobsRequest {
                instance_name: c.instance.clone(),
                blob_digests: digests,
                digest_function: 0,
            })
            .await?
            .into_inner()
            .missing_blob_digests
            .into_iter()
            .map(|d| d.hash)
            .collect();
        let want: HashSet<String> = outs.iter().map(|b| b.digest.hash_hex()).collect();
        if missing != want {
            return Err(OpError::Verify(format!(
                "FindMissingBlobs reported {} missing, expected the {} fresh outputs",
                missing.len(),
                want.len()
            )));
        }
        let mut bytes = 0;
        for b in &outs {
            self.rpcs.write.fetch_add(1, Ordering::Relaxed);
            bytes += c.bytestream_write(w, b).await?;
        }
        self.rpcs
            .update_action_result
            .fetch_add(1, Ordering::Relaxed);
        super::ac::update(c, w, &action, Self::result(&outs)).await?;
        Ok(bytes)
    }
}

#[async_trait::async_trait]
impl Workload for BazelLike {
    async fn seed(&mut self, clients: &Clients) -> Result<(), BenchError> {
        seed_blobs(clients, &self.inputs).await?;
        let seeded: Vec<_> = (0..self.count as u64).map(|n| self.action(n)).collect();
        let outs: Vec<Blob> = seeded.iter().flat_map(|(_, o)| o.iter().cloned()).collect();
        seed_blobs(clients, &outs).await?;
        let results: Vec<_> = seeded.iter().map(|(a, o)| (*a, Self::result(o))).collect();
        super::ac::seed_results(clients, &results).await?;
        self.seeded = seeded;
        Ok(())
    }

    async fn op(&self, clients: &Clients, worker: usize, rng: &mut Rng) -> Result<u64, OpError> {
        if rng.chance(self.hit_ratio) {
            self.hit(clients, worker, rng).await
        } else {
            self.miss(clients, worker, rng).await
        }
    }

    fn params(&self) -> serde_json::Value {
        serde_json::json!({
            "hit_ratio": self.hit_ratio, "output_size": self.outputs.blob(0).len(),
            "outputs_per_action": OUTPUTS, "inputs_per_action": INPUTS, "seeded_actions": self.count,
        })
    }

    fn extra(&self) -> Option<serde_json::Value> {
        let r = &self.rpcs;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Some(serde_json::json!({ "rpcs": {
            "GetActionResult": l(&r.get_action_result),
            "FindMissingBlobs": l(&r.find_missing),
            "ByteStream.Read": l(&r.read),
            "ByteStream.Write": l(&r.write),
            "UpdateActionResult": l(&r.update_action_result),
        }}))
    }
}
