//! `ac-get` (hits and misses) and `ac-update`.

use super::rpc::seed_blobs;
use super::{Clients, OpError, Workload};
use crate::bench::BenchError;
use crate::bench::args::LoadArgs;
use crate::bench::data::{Blob, BlobMaker, Rng};
use crate::digest::Digest;
use crate::proto::reapi::{
    ActionResult, GetActionResultRequest, OutputFile, UpdateActionResultRequest,
};
use std::sync::atomic::{AtomicU64, Ordering};

/// Action digests: digests of 32-byte blobs nobody uploads (the AC does not need the Action).
fn action_maker(seed: u64) -> BlobMaker {
    BlobMaker::new(seed ^ 0xac, 32)
}

/// A result with one output file.
pub fn result_for(output: &Blob, n: u64) -> ActionResult {
    ActionResult {
        output_files: vec![OutputFile {
            path: format!("out/file-{n}"),
            digest: Some(output.digest.to_proto()),
            ..Default::default()
        }],
        exit_code: 0,
        ..Default::default()
    }
}

/// Checks that a returned result is the one stored.
pub fn check_result(got: &ActionResult, want: &ActionResult) -> Result<(), OpError> {
    let same = got.exit_code == want.exit_code
        && got.output_files.len() == want.output_files.len()
        && got
            .output_files
            .iter()
            .zip(&want.output_files)
            .all(|(g, w)| g.path == w.path && g.digest == w.digest);
    if same {
        Ok(())
    } else {
        Err(OpError::Verify(
            "GetActionResult returned a different result than stored".into(),
        ))
    }
}

/// Stores a result.
pub async fn update(
    clients: &Clients,
    worker: usize,
    action: &Digest,
    result: ActionResult,
) -> Result<(), OpError> {
    clients
        .ac(worker)
        .update_action_result(UpdateActionResultRequest {
            instance_name: clients.instance.clone(),
            action_digest: Some(action.to_proto()),
            action_result: Some(result),
            results_cache_policy: None,
            digest_function: 0,
        })
        .await?;
    Ok(())
}

/// Stores seeded results, up to `SEED_IN_FLIGHT` at once over the workers' connections:
/// one after another, 1,000 updates (each waiting for a durable write) took 35 s on a loaded
/// box, long enough for the other workloads of a soak to wrap a small ring before the first
/// lookup read the seeded outputs.
pub async fn seed_results(
    clients: &Clients,
    results: &[(Digest, ActionResult)],
) -> Result<(), BenchError> {
    use futures::StreamExt;
    const SEED_IN_FLIGHT: usize = 32;
    if !clients.seed_writes() {
        return Ok(());
    }
    // Owned items: a stream of borrowed ones trips the `Send` check of `async_trait`.
    let owned: Vec<(usize, Digest, ActionResult)> = results
        .iter()
        .enumerate()
        .map(|(i, (a, r))| (i, *a, r.clone()))
        .collect();
    futures::stream::iter(owned)
        .map(|(i, a, r)| async move { update(clients, i, &a, r).await })
        .buffer_unordered(SEED_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<()>, OpError>>()
        .map_err(super::rpc::seed_error("seeding action results"))?;
    Ok(())
}

/// Looks a result up: `Ok(None)` on NOT_FOUND.
pub async fn get(
    clients: &Clients,
    worker: usize,
    action: &Digest,
) -> Result<Option<ActionResult>, OpError> {
    let r = clients
        .ac(worker)
        .get_action_result(GetActionResultRequest {
            instance_name: clients.instance.clone(),
            action_digest: Some(action.to_proto()),
            ..Default::default()
        })
        .await;
    match r {
        Ok(r) => Ok(Some(r.into_inner())),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(s.into()),
    }
}

/// GetActionResult: `--hit-ratio` of seeded actions, the rest misses (NOT_FOUND expected).
pub struct AcGet {
    hit_ratio: f64,
    count: usize,
    seed: u64,
    output: Option<Blob>,
    actions: Vec<(Digest, ActionResult)>,
}

impl AcGet {
    /// From `--hit-ratio` (0.9) and `--blobs` (1000 seeded actions).
    pub fn new(args: &LoadArgs, seed: u64) -> Self {
        Self {
            hit_ratio: args.hit_ratio.clamp(0.0, 1.0),
            count: args.blobs.unwrap_or(1000).max(1),
            seed,
            output: None,
            actions: Vec::new(),
        }
    }
}

#[async_trait::async_trait]
impl Workload for AcGet {
    async fn seed(&mut self, clients: &Clients) -> Result<(), BenchError> {
        let output = BlobMaker::new(self.seed, 1024).blob(0);
        seed_blobs(clients, std::slice::from_ref(&output)).await?;
        let actions = action_maker(self.seed);
        self.actions = (0..self.count as u64)
            .map(|n| (actions.blob(n).digest, result_for(&output, n)))
            .collect();
        seed_results(clients, &self.actions).await?;
        self.output = Some(output);
        Ok(())
    }

    async fn op(&self, clients: &Clients, worker: usize, rng: &mut Rng) -> Result<u64, OpError> {
        if rng.chance(self.hit_ratio) {
            let (a, want) = &self.actions[rng.below(self.actions.len())];
            match get(clients, worker, a).await? {
                Some(got) => check_result(&got, want).map(|()| 0),
                None => Err(OpError::Verify(
                    "a stored action result was NOT_FOUND".into(),
                )),
            }
        } else {
            match get(clients, worker, &rng.absent_digest()).await? {
                None => Ok(0),
                Some(_) => Err(OpError::Verify(
                    "an unknown action returned a result".into(),
                )),
            }
        }
    }

    fn params(&self) -> serde_json::Value {
        serde_json::json!({ "hit_ratio": self.hit_ratio, "seeded": self.count })
    }
}

/// UpdateActionResult of a fresh action per op.
pub struct AcUpdate {
    seed: u64,
    output: Option<Blob>,
    next: AtomicU64,
}

impl AcUpdate {
    /// No parameters.
    pub fn new(_args: &LoadArgs, seed: u64) -> Self {
        Self {
            seed,
            output: None,
            next: AtomicU64::new(0),
        }
    }
}

#[async_trait::async_trait]
impl Workload for AcUpdate {
    async fn seed(&mut self, clients: &Clients) -> Result<(), BenchError> {
        let output = BlobMaker::new(self.seed, 1024).blob(0);
        seed_blobs(clients, std::slice::from_ref(&output)).await?;
        self.output = Some(output);
        Ok(())
    }

    async fn op(&self, clients: &Clients, worker: usize, _rng: &mut Rng) -> Result<u64, OpError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let action = action_maker(self.seed ^ 0x5eed).blob(n).digest;
        let output = self.output.as_ref().expect("seeded");
        update(clients, worker, &action, result_for(output, n)).await?;
        Ok(0)
    }

    fn params(&self) -> serde_json::Value {
        serde_json::json!({})
    }
}
