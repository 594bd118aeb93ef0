//! Certificate loading, reload and error buckets.

use super::*;

fn write_pki(dir: &Path) -> TlsConfig {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let cert_file = dir.join("cert.pem");
    let key_file = dir.join("key.pem");
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    TlsConfig {
        cert_file: cert_file.to_str().unwrap().into(),
        key_file: key_file.to_str().unwrap().into(),
        client_ca_file: cert_file.to_str().unwrap().into(),
        ..TlsConfig::default()
    }
}

#[test]
fn bad_files_are_named_and_a_failed_reload_keeps_the_config_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = write_pki(dir.path());
    c.client_auth = ClientAuth::Required;
    let state = TlsState::load(&c).unwrap();
    let before = state.current.read().unwrap().clone();
    assert_eq!(before.alpn_protocols, vec![b"h2".to_vec()]);
    let mut missing = c.clone();
    missing.cert_file = dir.path().join("none.pem").to_str().unwrap().into();
    let e = TlsState::load(&missing).err().unwrap().to_string();
    assert!(e.contains("none.pem"), "{e}");
    let mut empty = c.clone();
    std::fs::write(dir.path().join("empty.pem"), "").unwrap();
    empty.client_ca_file = dir.path().join("empty.pem").to_str().unwrap().into();
    let e = TlsState::load(&empty).err().unwrap().to_string();
    assert!(e.contains("no CERTIFICATE"), "{e}");
    std::fs::write(&c.key_file, "garbage").unwrap();
    let e = state.reload().unwrap_err().to_string();
    assert!(e.contains("key.pem"), "{e}");
    assert!(Arc::ptr_eq(&before, &state.current.read().unwrap()));
}

#[test]
fn handshake_errors_are_bucketed() {
    let wrap = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
    assert_eq!(
        classify(&wrap(rustls::Error::NoCertificatesPresented)),
        FailReason::ClientCert
    );
    assert_eq!(
        classify(&wrap(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType
        ))),
        FailReason::Protocol
    );
    assert_eq!(
        classify(&io::Error::from(io::ErrorKind::UnexpectedEof)),
        FailReason::Io
    );
}
