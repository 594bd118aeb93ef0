//! The auth layer: one tower service in front of every gRPC route of a server, deciding from
//! the method path, before any handler runs (so a denied upload stores nothing).
//!
//! The token comes from `authorization: Bearer <token>`; a TLS client's certificate names from
//! the [`TlsPeer`] connect info of TLS listeners; a Unix socket peer's uid from tonic's
//! `UdsConnectInfo`. The token is never logged.

use crate::auth::{Authorizer, Right, TlsPeer};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::transport::server::UdsConnectInfo;

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token, and anonymous requests may not do this.
    #[error("this server needs a token (authorization: Bearer <token>) for {method}")]
    NoToken { method: String },
    /// A token that names no principal.
    #[error("unknown token")]
    UnknownToken,
    /// A known caller lacking the right.
    #[error("{principal} lacks the `{right}` right needed for {method}")]
    Denied {
        principal: String,
        right: &'static str,
        method: String,
    },
    /// A method no right covers.
    #[error("no right covers {method}")]
    UnknownMethod { method: String },
}

/// The right a gRPC method needs, or `None` for a method kiln does not know.
pub fn required_right(path: &str) -> Option<Right> {
    let (service, method) = path.strip_prefix('/')?.rsplit_once('/')?;
    let r = match (service, method) {
        ("google.devtools.remoteworkers.v1test2.Bots", _) => Right::Bot,
        ("build.bazel.remote.execution.v2.Capabilities", "GetCapabilities")
        | (
            "build.bazel.remote.execution.v2.ContentAddressableStorage",
            "FindMissingBlobs" | "BatchReadBlobs" | "GetTree" | "SplitBlob",
        )
        | ("google.bytestream.ByteStream", "Read" | "QueryWriteStatus")
        | ("build.bazel.remote.asset.v1.Fetch", "FetchBlob" | "FetchDirectory")
        | ("build.bazel.remote.execution.v2.ActionCache", "GetActionResult")
        | ("google.longrunning.Operations", "GetOperation" | "ListOperations" | "WaitOperation") => {
            Right::Read
        }
        (
            "build.bazel.remote.execution.v2.ContentAddressableStorage",
            "BatchUpdateBlobs" | "SpliceBlob",
        )
        | ("google.bytestream.ByteStream", "Write")
        | ("build.bazel.remote.asset.v1.Push", "PushBlob" | "PushDirectory") => Right::Write,
        ("build.bazel.remote.execution.v2.ActionCache", "UpdateActionResult") => Right::CacheWrite,
        ("build.bazel.remote.execution.v2.Execution", "Execute" | "WaitExecution")
        | ("google.longrunning.Operations", "CancelOperation" | "DeleteOperation") => {
            Right::Execute
        }
        _ => return None,
    };
    Some(r)
}

/// Decides one request: `Ok` or the reason it is refused. Counts it per principal. On the
/// bots listeners (`bots`) every method needs `bot`: a bot reads inputs and uploads outputs
/// there, and nothing else may use that server.
pub fn check<B>(auth: &Authorizer, req: &http::Request<B>, bots: bool) -> Result<(), AuthError> {
    if !auth.enabled() {
        return Ok(());
    }
    let method = req.uri().path();
    let token = req.headers().get(http::header::AUTHORIZATION).map(|v| {
        let v = v.as_bytes();
        match v.get(..7) {
            Some(p) if p.eq_ignore_ascii_case(b"bearer ") => v[7..].trim_ascii(),
            _ => v,
        }
    });
    let uid = req
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|i| i.peer_cred)
        .map(|c| c.uid());
    let tls = req.extensions().get::<TlsPeer>();
    let caller = auth.identify_peer(token, uid, tls);
    let outcome = if caller.unknown_token {
        Err(AuthError::UnknownToken)
    } else {
        let needed = if bots {
            Some(Right::Bot)
        } else {
            required_right(method)
        };
        match needed {
            None => Err(AuthError::UnknownMethod {
                method: method.into(),
            }),
            Some(r) if caller.rights.has(r) => Ok(()),
            Some(_) if token.is_none() && &*caller.name == "anonymous" => Err(AuthError::NoToken {
                method: method.into(),
            }),
            Some(r) => Err(AuthError::Denied {
                principal: caller.name.to_string(),
                right: r.name(),
                method: method.into(),
            }),
        }
    };
    if let Err(e) = &outcome
        && auth.record(&caller, true)
    {
        tracing::warn!(principal = %caller.name, error = %e, "request denied (logged once a minute per principal)");
    } else if outcome.is_ok() {
        auth.record(&caller, false);
    }
    outcome
}

/// The tower layer: wraps a route table's service with [`AuthService`].
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authorizer>,
    bots: bool,
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
            bots: self.bots,
        }
    }
}

/// Answers a refused request with its status; passes the others to the inner service.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authorizer>,
    bots: bool,
}

impl<S, B, RB> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match check(&self.auth, &req, self.bots) {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(e) => {
                // A trailers-only gRPC response: the status is in the headers, the body empty.
                let resp = super::status::auth_status(&e).into_http::<RB>();
                Box::pin(async move { Ok(resp) })
            }
        }
    }
}

/// Puts the auth layer in front of every route of `routes` (unless auth is off); `bots` for
/// the bots listeners, where every method needs the `bot` right.
pub fn protect(
    routes: tonic::service::Routes,
    auth: &Arc<Authorizer>,
    bots: bool,
) -> tonic::service::Routes {
    if !auth.enabled() {
        return routes;
    }
    let layer = AuthLayer {
        auth: auth.clone(),
        bots,
    };
    tonic::service::Routes::from(routes.into_axum_router().layer(layer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_maps_to_its_right() {
        let rex = "/build.bazel.remote.execution.v2.";
        for (m, r) in [
            ("Capabilities/GetCapabilities", Right::Read),
            ("ContentAddressableStorage/FindMissingBlobs", Right::Read),
            ("ContentAddressableStorage/BatchReadBlobs", Right::Read),
            ("ContentAddressableStorage/GetTree", Right::Read),
            ("ContentAddressableStorage/BatchUpdateBlobs", Right::Write),
            // A split stores only chunks of content already held: a read.
            ("ContentAddressableStorage/SplitBlob", Right::Read),
            ("ContentAddressableStorage/SpliceBlob", Right::Write),
            ("ActionCache/GetActionResult", Right::Read),
            ("ActionCache/UpdateActionResult", Right::CacheWrite),
            ("Execution/Execute", Right::Execute),
            ("Execution/WaitExecution", Right::Execute),
        ] {
            assert_eq!(required_right(&format!("{rex}{m}")), Some(r), "{m}");
        }
        let bs = "/google.bytestream.ByteStream/";
        assert_eq!(required_right(&format!("{bs}Read")), Some(Right::Read));
        assert_eq!(required_right(&format!("{bs}Write")), Some(Right::Write));
        let asset = "/build.bazel.remote.asset.v1.";
        for (m, r) in [
            ("Fetch/FetchBlob", Right::Read),
            ("Fetch/FetchDirectory", Right::Read),
            ("Push/PushBlob", Right::Write),
            ("Push/PushDirectory", Right::Write),
        ] {
            assert_eq!(required_right(&format!("{asset}{m}")), Some(r), "{m}");
        }
        let ops = "/google.longrunning.Operations/";
        assert_eq!(
            required_right(&format!("{ops}GetOperation")),
            Some(Right::Read)
        );
        assert_eq!(
            required_right(&format!("{ops}CancelOperation")),
            Some(Right::Execute)
        );
        assert_eq!(
            required_right("/google.devtools.remoteworkers.v1test2.Bots/CreateBotSession"),
            Some(Right::Bot)
        );
        assert_eq!(required_right("/x.Y/Z"), None);
    }
}
