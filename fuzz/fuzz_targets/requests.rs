//! Request decoding: the first byte picks a REAPI/ByteStream request message (or an Action,
//! Command, Directory or ActionResult as read from the CAS), the rest is decoded with prost and
//! put through the checks the services make: `validate_instance`, `DigestFunction::from_proto`,
//! `Digest::from_proto` on every digest, resource-name parsing, `paths::within_root` on paths.
//! Never panics; what decodes re-encodes to an equal message; accepted digests round-trip; the
//! instance rule of requests agrees with the one inside resource names.
#![no_main]

use kiln::api::resource_name::ResourceName;
use kiln::api::validate_instance;
use kiln::digest::{Digest, DigestFunction};
use kiln::proto::bytestream::{QueryWriteStatusRequest, ReadRequest, WriteRequest};
use kiln::proto::reapi::{self, *};
use prost::Message;

const H: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn digest(f: DigestFunction, d: Option<&reapi::Digest>) {
    if let Some(d) = d {
        if let Ok(v) = Digest::from_proto(f, d) {
            assert_eq!(&v.to_proto(), d);
        }
    }
}

fn envelope(instance: &str, function: i32) -> DigestFunction {
    let name = if instance.is_empty() {
        format!("blobs/{H}/1")
    } else {
        format!("{instance}/blobs/{H}/1")
    };
    let parsed = ResourceName::parse_read(&name);
    match validate_instance(instance) {
        Ok(()) => assert_eq!(
            parsed.map(|r| r.instance).as_deref(),
            Ok(instance),
            "instance {instance:?} valid in requests but not in resource names"
        ),
        Err(_) => assert!(
            parsed.is_err(),
            "instance {instance:?} invalid in requests but valid in resource names"
        ),
    }
    DigestFunction::from_proto(function).unwrap_or(DigestFunction::Sha256)
}

fn paths(cmd: &Command) {
    #[allow(deprecated)]
    let outputs = cmd
        .output_paths
        .iter()
        .chain(&cmd.output_files)
        .chain(&cmd.output_directories);
    for p in outputs {
        if let Some(n) = kiln::paths::within_root(&cmd.working_directory, p) {
            assert!(!n.starts_with('/') && !n.split('/').any(|s| s == ".." || s == "."));
        }
    }
}

fn result(f: DigestFunction, r: &ActionResult) {
    for o in &r.output_files {
        digest(f, o.digest.as_ref());
    }
    for o in &r.output_directories {
        digest(f, o.tree_digest.as_ref());
    }
    digest(f, r.stdout_digest.as_ref());
    digest(f, r.stderr_digest.as_ref());
}

fn directory(f: DigestFunction, d: &Directory) {
    for n in &d.files {
        digest(f, n.digest.as_ref());
    }
    for n in &d.directories {
        digest(f, n.digest.as_ref());
    }
}

/// Decodes `bytes` as `M`; on success checks that it re-encodes to an equal message.
fn decode<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Option<M> {
    let m = M::decode(bytes).ok()?;
    assert_eq!(M::decode(m.encode_to_vec().as_slice()).as_ref(), Ok(&m));
    Some(m)
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let sha = DigestFunction::Sha256;
    match which % 14 {
        0 => if let Some(r) = decode::<FindMissingBlobsRequest>(bytes) {
            let f = envelope(&r.instance_name, r.digest_function);
            r.blob_digests.iter().for_each(|d| digest(f, Some(d)));
        },
        1 => if let Some(r) = decode::<BatchUpdateBlobsRequest>(bytes) {
            let f = envelope(&r.instance_name, r.digest_function);
            r.requests.iter().for_each(|i| digest(f, i.digest.as_ref()));
        },
        2 => if let Some(r) = decode::<BatchReadBlobsRequest>(bytes) {
            let f = envelope(&r.instance_name, r.digest_function);
            r.digests.iter().for_each(|d| digest(f, Some(d)));
        },
        3 => if let Some(r) = decode::<GetTreeRequest>(bytes) {
            let f = envelope(&r.instance_name, r.digest_function);
            digest(f, r.root_digest.as_ref());
        },
        4 => if let Some(r) = decode::<GetActionResultRequest>(bytes) {
            let f = envelope(&r.instance_name, r.digest_function);
            digest(f, r.action_digest.as_ref());
        },
        5 => if let Some(r) = decode::<UpdateActionResultRequest>(bytes) {
            let f = envelope(&r.instance_name, r.digest_function);
            digest(f, r.action_digest.as_ref());
            if let Some(a) = &r.action_result {
                result(f, a);
            }
        },
        6 => if let Some(r) = decode::<ExecuteRequest>(bytes) {
            let f = envelope(&r.instance_name, r.digest_function);
            digest(f, r.action_digest.as_ref());
        },
        7 => if let Some(r) = decode::<ReadRequest>(bytes) {
            let _ = ResourceName::parse_read(&r.resource_name);
        },
        8 => if let Some(r) = decode::<WriteRequest>(bytes) {
            let _ = ResourceName::parse_write(&r.resource_name);
        },
        9 => if let Some(r) = decode::<QueryWriteStatusRequest>(bytes) {
            let _ = ResourceName::parse_write(&r.resource_name);
        },
        10 => if let Some(a) = decode::<Action>(bytes) {
            digest(sha, a.command_digest.as_ref());
            digest(sha, a.input_root_digest.as_ref());
        },
        11 => if let Some(c) = decode::<Command>(bytes) {
            paths(&c);
        },
        12 => if let Some(d) = decode::<Directory>(bytes) {
            directory(sha, &d);
        },
        _ => if let Some(r) = decode::<ActionResult>(bytes) {
            result(sha, &r);
        },
    }
});
