//! One execution slot: a Remote Worker API bot session that takes a lease, runs it while
//! reporting it ACTIVE (which is also how it hears about a cancellation), and reports it
//! COMPLETED with the result. A worker with `--concurrency N` runs N slots.

use super::action::{Context, execute};
use super::error::{WorkerError, rpc};
use crate::digest::{Digest, DigestFunction};
use crate::proto::reapi::{self, Action};
use crate::proto::rwapi::{
    BotSession, BotStatus, CreateBotSessionRequest, Lease, LeaseState, UpdateBotSessionRequest,
    Worker, worker,
};
use crate::proto::type_url;
use prost::Message;
use std::sync::Arc;
use std::time::Duration;

/// Runs one slot forever, re-creating its session after errors.
pub async fn run_slot(ctx: Arc<Context>, bot_id: String, properties: Vec<(String, String)>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match drive(&ctx, &bot_id, &properties).await {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, bot_id, "bot session failed; reconnecting");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn update(ctx: &Context, session: &BotSession) -> Result<BotSession, WorkerError> {
    let req = UpdateBotSessionRequest {
        name: session.name.clone(),
        bot_session: Some(session.clone()),
        update_mask: None,
    };
    Ok(ctx
        .client
        .bots
        .clone()
        .update_bot_session(req)
        .await
        .map_err(rpc("UpdateBotSession"))?
        .into_inner())
}

async fn drive(
    ctx: &Context,
    bot_id: &str,
    properties: &[(String, String)],
) -> Result<(), WorkerError> {
    let session = BotSession {
        bot_id: bot_id.to_string(),
        status: BotStatus::Ok as i32,
        worker: Some(Worker {
            properties: properties
                .iter()
                .map(|(k, v)| worker::Property {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let req = CreateBotSessionRequest {
        parent: String::new(),
        bot_session: Some(session),
    };
    let mut session = ctx
        .client
        .bots
        .clone()
        .create_bot_session(req)
        .await
        .map_err(rpc("CreateBotSession"))?
        .into_inner();
    tracing::info!(bot_id, session = %session.name, "bot session open");
    loop {
        session.leases.clear();
        let mut reply = update(ctx, &session).await?;
        while let Some(lease) = reply
            .leases
            .iter()
            .find(|l| l.state == LeaseState::Pending as i32)
            .cloned()
        {
            reply = run_lease(ctx, &mut session, lease).await?;
        }
    }
}

/// The digest function of a lease's Action: SHA-256 unless its requirements name another
/// (`proto::LEASE_DIGEST_FUNCTION`).
fn function_of(lease: &Lease) -> Result<DigestFunction, WorkerError> {
    let named = lease
        .requirements
        .iter()
        .flat_map(|w| &w.properties)
        .find(|p| p.key == crate::proto::LEASE_DIGEST_FUNCTION);
    match named {
        None => Ok(DigestFunction::Sha256),
        Some(p) => DigestFunction::from_name(&p.value).ok_or_else(|| WorkerError::Invalid {
            what: "lease requirements",
            reason: format!("unknown digest function {:?}", p.value),
        }),
    }
}

async fn action_of(
    ctx: &Context,
    lease: &Lease,
    function: DigestFunction,
) -> Result<Action, WorkerError> {
    let bad = |e: prost::DecodeError| WorkerError::Invalid {
        what: "lease payload",
        reason: e.to_string(),
    };
    let any = lease.payload.as_ref().ok_or(WorkerError::Invalid {
        what: "lease payload",
        reason: "missing".into(),
    })?;
    match any.type_url.as_str() {
        type_url::ACTION => Action::decode(any.value.as_slice()).map_err(bad),
        type_url::DIGEST => {
            let d = reapi::Digest::decode(any.value.as_slice()).map_err(bad)?;
            let d = Digest::from_proto(function, &d)?;
            let bytes = ctx
                .cache
                .messages(&ctx.client, &[d])
                .await?
                .remove(&d)
                .ok_or(WorkerError::MissingInput(d))?;
            Action::decode(bytes).map_err(bad)
        }
        other => Err(WorkerError::Invalid {
            what: "lease payload",
            reason: format!("unknown type {other}"),
        }),
    }
}

/// Runs a lease to completion and returns the server's answer to the COMPLETED report.
async fn run_lease(
    ctx: &Context,
    session: &mut BotSession,
    lease: Lease,
) -> Result<BotSession, WorkerError> {
    let id = lease.id.clone();
    let action = match function_of(&lease) {
        Ok(function) => action_of(ctx, &lease, function)
            .await
            .map(|action| (action, function)),
        Err(e) => Err(e),
    };
    let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
    session.leases = vec![Lease {
        id: id.clone(),
        state: LeaseState::Active as i32,
        ..Default::default()
    }];
    let outcome = match action {
        Err(e) => super::action::LeaseOutcome {
            result: None,
            status: crate::proto::google::rpc::Status {
                code: tonic::Code::InvalidArgument as i32,
                message: e.to_string(),
                details: vec![],
            },
        },
        Ok((action, function)) => {
            let work = execute(ctx, action, function, cancel_rx);
            tokio::pin!(work);
            loop {
                tokio::select! {
                    outcome = &mut work => break outcome,
                    reply = update(ctx, session) => {
                        let reply = reply?;
                        let still_ours = reply.leases.iter().any(|l| l.id == id && l.state != LeaseState::Cancelled as i32);
                        if !still_ours {
                            tracing::info!(lease = %id, "lease cancelled by the server; killing the action");
                            let _ = cancel_tx.send(true);
                        }
                    }
                }
            }
        }
    };
    let cancelled = *cancel_tx.borrow();
    session.leases = if cancelled {
        vec![]
    } else {
        vec![Lease {
            id,
            state: LeaseState::Completed as i32,
            status: Some(outcome.status),
            result: outcome.result.map(|r| prost_types::Any {
                type_url: type_url::ACTION_RESULT.into(),
                value: r.encode_to_vec(),
            }),
            ..Default::default()
        }]
    };
    update(ctx, session).await
}
