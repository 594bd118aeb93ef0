//! The client side: `authorization: Bearer <token>` on every call `kiln worker` and `kiln bench`
//! make (`--token-file`).

use super::AuthFileError;
use std::path::Path;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Longest token file read: a token is 64 hex digits; anything much larger is a wrong file.
const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// Adds the bearer header when it holds a token.
#[derive(Clone, Default)]
pub struct Bearer(Option<AsciiMetadataValue>);

/// A channel whose calls carry the bearer header.
pub type AuthChannel = InterceptedService<Channel, Bearer>;

impl Bearer {
    /// No header.
    pub fn none() -> Self {
        Self(None)
    }

    /// The token in `path` (surrounding whitespace ignored).
    pub fn from_file(path: &Path) -> Result<Self, AuthFileError> {
        use std::io::Read;
        let io = |source| AuthFileError::Io {
            path: path.into(),
            source,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(io)?
            .take(MAX_TOKEN_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(io)?;
        let token = text.trim();
        if text.len() as u64 > MAX_TOKEN_FILE_BYTES || token.is_empty() {
            return Err(AuthFileError::Invalid(format!(
                "{}: expected one token (at most {MAX_TOKEN_FILE_BYTES} bytes)",
                path.display()
            )));
        }
        Self::from_token(token)
    }

    /// A token given directly.
    pub fn from_token(token: &str) -> Result<Self, AuthFileError> {
        let mut v: AsciiMetadataValue = format!("Bearer {token}").parse().map_err(|_| {
            AuthFileError::Invalid("the token has characters a header cannot carry".into())
        })?;
        v.set_sensitive(true);
        Ok(Self(Some(v)))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}
