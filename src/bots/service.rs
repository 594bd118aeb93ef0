//! CreateBotSession and UpdateBotSession: proto leases to scheduler reports and back.

use crate::exec::platform::Properties;
use crate::exec::{LeaseReport, LeaseState, LeaseView, Scheduler};
use crate::proto::reapi::{ActionResult, ExecuteResponse};
use crate::proto::rwapi::bots_server::Bots;
use crate::proto::rwapi::{
    self, BotSession, CreateBotSessionRequest, Lease, UpdateBotSessionRequest,
};
use crate::proto::type_url;
use prost::Message;
use tonic::{Request, Response, Status};

/// The Bots service.
pub struct BotsService {
    scheduler: Scheduler,
}

impl BotsService {
    /// The service over a scheduler.
    pub fn new(scheduler: Scheduler) -> Self {
        Self { scheduler }
    }
}

/// A bot's properties: its worker's and every device's.
fn properties(session: &BotSession) -> Properties {
    let Some(w) = session.worker.as_ref() else {
        return Properties::default();
    };
    let worker = w
        .properties
        .iter()
        .map(|p| (p.key.clone(), p.value.clone()));
    let devices = w.devices.iter().flat_map(|d| {
        d.properties
            .iter()
            .map(|p| (p.key.clone(), p.value.clone()))
    });
    Properties(worker.chain(devices).collect())
}

fn state_of(lease: &Lease) -> Result<LeaseState, Status> {
    match rwapi::LeaseState::try_from(lease.state) {
        Ok(rwapi::LeaseState::Pending) => Ok(LeaseState::Pending),
        Ok(rwapi::LeaseState::Active) => Ok(LeaseState::Active),
        Ok(rwapi::LeaseState::Completed) => Ok(LeaseState::Completed),
        Ok(rwapi::LeaseState::Cancelled) => Ok(LeaseState::Cancelled),
        _ => Err(Status::invalid_argument(format!(
            "lease {} has invalid state {}",
            lease.id, lease.state
        ))),
    }
}

fn result_of(
    lease: &Lease,
) -> Result<
    (
        Option<ActionResult>,
        Option<crate::proto::google::rpc::Status>,
    ),
    Status,
> {
    let mut status = lease.status.clone();
    let Some(any) = lease.result.as_ref() else {
        return Ok((None, status));
    };
    let bad =
        |e: prost::DecodeError| Status::invalid_argument(format!("lease {} result: {e}", lease.id));
    let result = match any.type_url.as_str() {
        type_url::ACTION_RESULT => ActionResult::decode(any.value.as_slice()).map_err(bad)?,
        type_url::EXECUTE_RESPONSE => {
            let r = ExecuteResponse::decode(any.value.as_slice()).map_err(bad)?;
            if status.as_ref().is_none_or(|s| s.code == 0) && r.status.is_some() {
                status = r.status;
            }
            r.result.unwrap_or_default()
        }
        other => {
            return Err(Status::invalid_argument(format!(
                "lease {} result has unknown type {other}",
                lease.id
            )));
        }
    };
    Ok((Some(result), status))
}

fn reports(session: &BotSession) -> Result<Vec<LeaseReport>, Status> {
    session
        .leases
        .iter()
        .map(|l| {
            let (result, status) = result_of(l)?;
            Ok(LeaseReport {
                id: l.id.clone(),
                state: state_of(l)?,
                status,
                result,
            })
        })
        .collect()
}

fn lease(view: LeaseView) -> Lease {
    let state = match view.state {
        LeaseState::Pending => rwapi::LeaseState::Pending,
        LeaseState::Active => rwapi::LeaseState::Active,
        LeaseState::Completed => rwapi::LeaseState::Completed,
        LeaseState::Cancelled => rwapi::LeaseState::Cancelled,
    };
    let requirements =
        (view.function != crate::digest::DigestFunction::Sha256).then(|| rwapi::Worker {
            properties: vec![rwapi::worker::Property {
                key: crate::proto::LEASE_DIGEST_FUNCTION.into(),
                value: view.function.name().into(),
            }],
            ..Default::default()
        });
    Lease {
        id: view.id,
        payload: view.action.map(|a| prost_types::Any {
            type_url: type_url::ACTION.into(),
            value: a.encode_to_vec(),
        }),
        state: state as i32,
        requirements,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Bots for BotsService {
    async fn create_bot_session(
        &self,
        request: Request<CreateBotSessionRequest>,
    ) -> Result<Response<BotSession>, Status> {
        let req = request.into_inner();
        let mut session = req
            .bot_session
            .ok_or_else(|| Status::invalid_argument("missing bot_session"))?;
        if session.bot_id.is_empty() {
            return Err(Status::invalid_argument("bot_session.bot_id is empty"));
        }
        session.name =
            self.scheduler
                .create_bot_session(&req.parent, &session.bot_id, properties(&session));
        session.leases.clear();
        Ok(Response::new(session))
    }

    async fn update_bot_session(
        &self,
        request: Request<UpdateBotSessionRequest>,
    ) -> Result<Response<BotSession>, Status> {
        let req = request.into_inner();
        let mut session = req
            .bot_session
            .ok_or_else(|| Status::invalid_argument("missing bot_session"))?;
        let name = if req.name.is_empty() {
            session.name.clone()
        } else {
            req.name
        };
        let reports = reports(&session)?;
        let views = self
            .scheduler
            .update_bot_session(&name, properties(&session), reports)
            .await?;
        session.name = name;
        session.leases = views.into_iter().map(lease).collect();
        Ok(Response::new(session))
    }
}
