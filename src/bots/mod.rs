//! The Remote Worker API (google.devtools.remoteworkers.v1test2) Bots service, as BuildGrid
//! speaks it: `lease.payload` = Any(build.bazel.remote.execution.v2.Action) with its effective
//! timeout set, `lease.result` = Any(ActionResult) and `lease.status` the run's status. It is
//! served on its own Unix socket (mode 0660) together with CAS and ByteStream, so a bot needs
//! one connection for both work and blobs. Any RWAPI bot can connect; `kiln worker` is one.

mod service;

pub use service::BotsService;

use crate::exec::Scheduler;
use crate::proto::rwapi::bots_server::BotsServer;

/// Adds the Bots service over `scheduler` to a route table.
pub fn add_to(scheduler: &Scheduler, routes: &mut tonic::service::RoutesBuilder) {
    routes.add_service(BotsServer::new(BotsService::new(scheduler.clone())));
}
