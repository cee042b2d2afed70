//! Getting a command to albatross and its reply back: over the daemon's
//! Unix socket (one framed message each way), or over its TLS endpoint,
//! where the command travels in a fresh client certificate (extension
//! 1.3.6.1.4.1.49836.42) signed by the operator's CA key, and a large image
//! is streamed after the handshake.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deployer_core::Secret;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::message::{cert_extension, Command, Name, Wire};
use crate::wire::DecodeError;

/// The OID of the extension carrying a command.
pub const EXTENSION_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 49836, 42];

/// Images above this size are streamed after the TLS handshake (albatross
/// ≥ 2.5) instead of travelling inside the certificate (its endpoint
/// refuses certificates over 16 MiB).
pub const STREAM_ABOVE: usize = 4 << 20;

/// The largest reply frame accepted. The deployer asks for no image back
/// (`get`), and info replies carry digests, not images: a daemon (or a
/// man in the middle) announcing more is refused before anything is
/// allocated.
pub const MAX_REPLY: usize = 16 << 20;

/// Why an exchange with the daemon failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransportError {
    /// It could not be reached.
    Connect(String),
    /// It closed the connection without replying: albatross does that with
    /// a command it does not decode (an older daemon, a newer tag).
    NoReply,
    /// It did not answer in time.
    Timeout(Duration),
    /// Its reply did not decode.
    Decode(DecodeError),
    /// TLS, certificates or keys.
    Tls(String),
    /// The message does not fit albatross's frame.
    TooLarge(crate::message::TooLarge),
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransportError::Connect(why) => write!(f, "cannot reach albatross: {why}"),
            TransportError::NoReply => {
                f.write_str("albatross closed the connection without replying (an older daemon?)")
            }
            TransportError::Timeout(d) => write!(f, "albatross did not answer within {} s", d.as_secs()),
            TransportError::Decode(e) => write!(f, "albatross's reply: {e}"),
            TransportError::Tls(why) => write!(f, "TLS to albatross: {why}"),
            TransportError::TooLarge(e) => write!(f, "cannot send to albatross: {e}"),
        }
    }
}

impl std::error::Error for TransportError {}

/// The TLS endpoint of a remote albatross, and the credentials to use it.
#[derive(Clone)]
pub struct Remote {
    /// `host:port` (albatross listens on 1025).
    pub address: String,
    /// The CA that signed the endpoint's certificate (`cacert.pem`).
    pub server_ca: PathBuf,
    /// The operator's CA certificate (a sub-CA issued for the deployer, or
    /// the root), in PEM; certificates after the first are sent along as
    /// the chain.
    pub client_ca: PathBuf,
    /// Its private key, in PEM.
    pub client_ca_key: Secret<String>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({}, ca {}, key [redacted])", self.address, self.client_ca.display())
    }
}

/// Reads one frame: a 4-byte big-endian length, then that many bytes.
/// `None` at the end of the stream (or a frame length ≤ 0).
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Vec<u8>>, std::io::Error> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = i32::from_be_bytes(len);
    if len <= 0 {
        return Ok(None);
    }
    let len = len as usize;
    if len > MAX_REPLY {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a reply frame of {len} bytes (at most {MAX_REPLY} are read)"),
        ));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(Some(buf))
}

/// Writes `data` as one frame.
pub(crate) async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8]) -> std::io::Result<()> {
    w.write_all(&(data.len() as u32).to_be_bytes()).await?;
    w.write_all(data).await
}

/// Reads the reply: one decoded message.
async fn read_reply<R: AsyncRead + Unpin>(r: &mut R) -> Result<Wire<'static>, TransportError> {
    let frame = read_frame(r).await.map_err(|e| TransportError::Connect(format!("reading the reply: {e}")))?;
    let frame = frame.ok_or(TransportError::NoReply)?;
    Wire::decode(&frame).map(Wire::into_owned).map_err(TransportError::Decode)
}

/// Sends `message` over the Unix socket at `socket`; its reply.
pub(crate) async fn local(
    socket: &Path,
    message: &Wire<'_>,
    timeout: Duration,
) -> Result<Wire<'static>, TransportError> {
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| TransportError::Connect(format!("{}: {e}", socket.display())))?;
        let framed = message.encode_framed().map_err(TransportError::TooLarge)?;
        stream
            .write_all(&framed)
            .await
            .map_err(|e| TransportError::Connect(format!("sending to {}: {e}", socket.display())))?;
        read_reply(&mut stream).await
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| TransportError::Timeout(timeout))?
}

/// PEM blocks of `kind` in `text`, decoded.
fn pem_blocks(text: &str, kind: &str) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    let begin = format!("-----BEGIN {kind}-----");
    let end = format!("-----END {kind}-----");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&begin) {
        let after = &rest[start + begin.len()..];
        let Some(stop) = after.find(&end) else { break };
        let body: String = after[..stop].chars().filter(|c| !c.is_whitespace()).collect();
        if let Ok(der) = base64::engine::general_purpose::STANDARD.decode(body) {
            out.push(der);
        }
        rest = &after[stop + end.len()..];
    }
    out
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let text = std::fs::read_to_string(path).map_err(|e| TransportError::Tls(format!("{}: {e}", path.display())))?;
    let certs: Vec<_> = pem_blocks(&text, "CERTIFICATE").into_iter().map(CertificateDer::from).collect();
    if certs.is_empty() {
        return Err(TransportError::Tls(format!("{} holds no PEM certificate", path.display())));
    }
    Ok(certs)
}

/// Verifies the endpoint's certificate against the configured CA only:
/// albatross's server certificates name no host (no subjectAltName), so
/// there is no name to check. The certificate must be signed by that CA
/// itself (intermediates the server sends are not used: albatross's CA
/// also signs operators' sub-CAs, and an operator could make a server
/// certificate under one), and must say it is a server's (EKU serverAuth,
/// as `albatross-client generate` makes it).
#[derive(Debug)]
struct CaOnly {
    roots: Vec<rustls::pki_types::TrustAnchor<'static>>,
    provider: Arc<CryptoProvider>,
}

/// id-kp-serverAuth (1.3.6.1.5.5.7.3.1), DER-encoded without tag and length.
const EKU_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];

impl ServerCertVerifier for CaOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rustls::Error::General(format!("the endpoint's certificate: {e}")))?;
        let _ = intermediates;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &self.roots,
            &[],
            now,
            webpki::KeyUsage::required(EKU_SERVER_AUTH),
            None,
            None,
        )
        .map_err(|e| {
            rustls::Error::General(format!("the endpoint's certificate is not from the configured CA: {e}"))
        })?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A fresh client certificate carrying `command`, for `name`'s label,
/// valid from 10 s ago for 5 minutes, signed by the operator's CA; with
/// the chain to send and its key.
fn client_certificate(
    remote: &Remote,
    name: &Name,
    command: &Command<'_>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TransportError> {
    use rcgen::{
        CertificateParams, CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    let tls = |e: rcgen::Error| TransportError::Tls(e.to_string());
    let ca_chain = read_certs(&remote.client_ca)?;
    let ca_key = KeyPair::from_pem(remote.client_ca_key.expose())
        .map_err(|e| TransportError::Tls(format!("the operator's CA key: {e}")))?;
    let issuer = Issuer::from_ca_cert_der(&ca_chain[0], ca_key).map_err(tls)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(tls)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name.label().unwrap_or("."));
    params.distinguished_name = dn;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::seconds(10);
    params.not_after = now + time::Duration::seconds(300);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.custom_extensions = vec![CustomExtension::from_oid_content(EXTENSION_OID, cert_extension(command))];
    let leaf = params.signed_by(&key, &issuer).map_err(tls)?;
    let mut chain = vec![leaf.der().clone()];
    chain.extend(ca_chain);
    Ok((chain, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))))
}

/// Sends `command` (for `name`) to the TLS endpoint of `remote`; with
/// `stream`, the image (left out of the command) follows the handshake as
/// chunks ended by an empty one. Its reply.
pub(crate) async fn remote(
    remote: &Remote,
    name: &Name,
    command: &Command<'_>,
    stream: Option<&[u8]>,
    timeout: Duration,
) -> Result<Wire<'static>, TransportError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = Vec::new();
    for ca in read_certs(&remote.server_ca)? {
        let anchor = webpki::anchor_from_trusted_cert(&ca)
            .map_err(|e| TransportError::Tls(format!("{}: {e}", remote.server_ca.display())))?;
        roots.push(anchor.to_owned());
    }
    let (chain, key) = client_certificate(remote, name, command)?;
    let verifier = Arc::new(CaOnly { roots, provider: provider.clone() });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .map_err(|e| TransportError::Tls(format!("the client certificate: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let host = remote.address.rsplit_once(':').map_or(remote.address.as_str(), |(h, _)| h);
    let server_name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
        .map_err(|e| TransportError::Connect(format!("{}: {e}", remote.address)))?;
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(&remote.address)
            .await
            .map_err(|e| TransportError::Connect(format!("{}: {e}", remote.address)))?;
        let mut tls = connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| TransportError::Tls(format!("the handshake with {}: {e}", remote.address)))?;
        if let Some(image) = stream {
            let send = |e: std::io::Error| TransportError::Connect(format!("sending the image: {e}"));
            for chunk in image.chunks(64 << 10) {
                write_frame(&mut tls, chunk).await.map_err(send)?;
            }
            tls.write_all(&0u32.to_be_bytes()).await.map_err(send)?;
            tls.flush().await.map_err(send)?;
        }
        read_reply(&mut tls).await
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| TransportError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_huge_reply_is_refused_before_anything_is_allocated() {
        // A reply announcing 2 GiB - 1 bytes, and then nothing.
        let announced = (i32::MAX).to_be_bytes();
        let e = read_frame(&mut &announced[..]).await.unwrap_err();
        assert!(e.to_string().contains("at most 16777216"), "{e}");
        let small = [0, 0, 0, 2, 0x30, 0x00];
        assert_eq!(read_frame(&mut &small[..]).await.unwrap(), Some(vec![0x30, 0x00]));
    }
}
