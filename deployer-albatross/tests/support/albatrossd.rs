//! Test-only: a small albatross daemon that speaks the protocol (framed DER
//! on a Unix socket; TLS 1.3 with client certificates carrying the command
//! in extension 1.3.6.1.4.1.49836.42, images streamed after the handshake)
//! and records what it received. It keeps "running" unikernels as a map
//! from name to image digest, and can act like an older daemon, refuse,
//! hang, answer garbage, or let unikernels die right after they start.
//! Also the test PKI: a root CA, the endpoint's certificate (CN "server",
//! no SAN, as albatross makes it) and an operator sub-CA.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use deployer_albatross::message::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How the daemon behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// As albatross 2.7.
    Current,
    /// As albatross 2.6: closes without replying to [21] and [19].
    Old26,
    /// Answers every create with this failure.
    Refuse(String),
    /// Never answers.
    Hang,
    /// Answers bytes that are not a message.
    Garbage,
    /// Unikernels start, then are gone by the next info after the first.
    DiesAfterStart,
}

/// A command as received.
#[derive(Clone, Debug)]
pub struct Received {
    /// "unix" or "tls".
    pub via: &'static str,
    /// The header's name (unix) or the certificate's CN (tls).
    pub name: String,
    /// The command.
    pub command: Command<'static>,
    /// The image, uncompressed, for a create.
    pub image: Option<Vec<u8>>,
}

#[derive(Default)]
struct State {
    running: HashMap<String, (Vec<u8>, u32)>,
    infos_since_start: HashMap<String, u32>,
    starts: u32,
}

/// A running test daemon.
pub struct TestDaemon {
    /// Its Unix socket.
    pub socket: PathBuf,
    /// What it received, in order.
    pub received: Arc<Mutex<Vec<Received>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    state: Arc<Mutex<State>>,
}

fn inflate(compressed: bool, image: &[u8]) -> Vec<u8> {
    if !compressed {
        return image.to_vec();
    }
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(image).read_to_end(&mut out).expect("a zlib image");
    out
}

fn reply(name: &Name, payload: Payload<'static>) -> Vec<u8> {
    Wire { header: Header::new(name.clone()), payload }.encode_framed().unwrap()
}

impl TestDaemon {
    /// Starts one with its socket in `dir`.
    pub async fn start(dir: &Path, behaviour: Behaviour) -> TestDaemon {
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("vmmd.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let daemon = TestDaemon {
            socket,
            received: Arc::default(),
            behaviour: Arc::new(Mutex::new(behaviour)),
            state: Arc::default(),
        };
        let handler = daemon.handler();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let handler = handler.clone();
                tokio::spawn(async move {
                    let Some(frame) = read_frame(&mut s).await else { return };
                    let Ok(wire) = Wire::decode(&frame) else { return };
                    let Payload::Command(command) = wire.payload else { return };
                    let name = wire.header.name.clone();
                    if let Some(answer) = handler.handle("unix", &name, &name.to_string(), command.into_owned(), None) {
                        let _ = s.write_all(&answer).await;
                    } else if handler.hangs() {
                        std::future::pending::<()>().await;
                    }
                });
            }
        });
        daemon
    }

    fn handler(&self) -> Handler {
        Handler { received: self.received.clone(), behaviour: self.behaviour.clone(), state: self.state.clone() }
    }

    /// Changes how it behaves.
    pub fn behave(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    /// Serves the TLS endpoint too, on a free loopback port, with `pki`'s
    /// server certificate, accepting clients whose chain leads to `pki`'s
    /// root. Returns `127.0.0.1:port`.
    pub async fn serve_tls(&self, pki: &Pki) -> String {
        self.serve_tls_as(pki, vec![pki.server_der.clone()], pki.server_key_der()).await
    }

    /// [`TestDaemon::serve_tls`], presenting `chain` (leaf first) with `key`
    /// as the endpoint's certificate: an impostor's, say.
    pub async fn serve_tls_as(
        &self,
        pki: &Pki,
        chain: Vec<rustls::pki_types::CertificateDer<'static>>,
        key: rustls::pki_types::PrivateKeyDer<'static>,
    ) -> String {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.root_der.clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let handler = self.handler();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, handler) = (acceptor.clone(), handler.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let leaf = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first().cloned())
                        .expect("a client certificate");
                    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).expect("a certificate");
                    let cn =
                        cert.subject().iter_common_name().next().and_then(|c| c.as_str().ok()).unwrap_or("").to_owned();
                    let oid = x509_parser::oid_registry::Oid::from(&[1, 3, 6, 1, 4, 1, 49836, 42]).unwrap();
                    let ext = cert.extensions().iter().find(|e| e.oid == oid).expect("the albatross extension");
                    let command = decode_cert_extension(ext.value).expect("a command").into_owned();
                    // A create whose image is empty: the image follows.
                    let streamed = match &command {
                        Command::Unikernel(UnikernelCmd::ForceCreate(_, c) | UnikernelCmd::Create(_, c))
                            if c.image.is_empty() =>
                        {
                            let mut image = Vec::new();
                            while let Some(chunk) = read_frame(&mut tls).await {
                                image.extend_from_slice(&chunk);
                            }
                            Some(image)
                        }
                        _ => None,
                    };
                    let name = Name::unikernel(&cn).unwrap_or_else(|_| Name::root());
                    if let Some(answer) = handler.handle("tls", &name, &cn, command, streamed) {
                        let _ = tls.write_all(&answer).await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        address
    }
}

/// Reads a frame (a 4-byte big-endian length, then the bytes); `None` at
/// the end or for an empty frame.
async fn read_frame<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.ok()?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 {
        return None;
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await.ok()?;
    Some(buf)
}

#[derive(Clone)]
struct Handler {
    received: Arc<Mutex<Vec<Received>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    state: Arc<Mutex<State>>,
}

impl Handler {
    fn hangs(&self) -> bool {
        *self.behaviour.lock().unwrap() == Behaviour::Hang
    }

    /// The framed answer to `command`, or `None` to close without one.
    fn handle(
        &self,
        via: &'static str,
        name: &Name,
        shown: &str,
        command: Command<'static>,
        streamed: Option<Vec<u8>>,
    ) -> Option<Vec<u8>> {
        let behaviour = self.behaviour.lock().unwrap().clone();
        let image = match &command {
            Command::Unikernel(UnikernelCmd::ForceCreate(_, c) | UnikernelCmd::Create(_, c)) => {
                Some(inflate(c.compressed, streamed.as_deref().unwrap_or(&c.image)))
            }
            _ => None,
        };
        self.received.lock().unwrap().push(Received {
            via,
            name: shown.to_owned(),
            command: command.clone(),
            image: image.clone(),
        });
        match behaviour {
            Behaviour::Hang => return None,
            Behaviour::Garbage => return Some([0, 0, 0, 3, 1, 2, 3].to_vec()),
            Behaviour::Old26 => {
                if matches!(
                    command,
                    Command::Unikernel(
                        UnikernelCmd::ForceCreate(CreateVersion::V27, _) | UnikernelCmd::Info(InfoVersion::V27)
                    )
                ) {
                    return None;
                }
            }
            _ => {}
        }
        let key = name.to_string();
        let mut state = self.state.lock().unwrap();
        let payload = match command {
            Command::Unikernel(UnikernelCmd::ForceCreate(_, _)) => {
                if let Behaviour::Refuse(why) = behaviour {
                    Payload::Failure(why)
                } else {
                    state.starts += 1;
                    let n = state.starts;
                    state.running.insert(key.clone(), (Sha256::digest(image.unwrap()).to_vec(), n));
                    state.infos_since_start.insert(key, 0);
                    Payload::Success(Success::String("created unikernel".into()))
                }
            }
            Command::Unikernel(UnikernelCmd::Info(version)) => {
                let seen = state.infos_since_start.entry(key.clone()).or_default();
                *seen += 1;
                if behaviour == Behaviour::DiesAfterStart && *seen > 1 {
                    state.running.remove(&key);
                }
                let list = state
                    .running
                    .iter()
                    .filter(|(n, _)| **n == key || name.label().is_none())
                    .map(|(n, (digest, start))| {
                        let info = Info {
                            typ: Typ::Solo5,
                            startup: None,
                            fail_behaviour: FailBehaviour::Restart(Default::default()),
                            cpuids: [0].into(),
                            memory: 32,
                            digest: digest.clone(),
                            blocks: vec![],
                            bridges: vec![],
                            arguments: vec![],
                            started: Some(format!("2026120112{:04}Z", start)),
                            cpus: Some(1),
                            linux_boot_partition: None,
                        };
                        (Name::parse(n).unwrap(), info)
                    })
                    .collect();
                Payload::Success(Success::UnikernelInfo(version, list))
            }
            other => Payload::Failure(format!("the test daemon does not do {other:?}")),
        };
        Some(reply(name, payload))
    }
}

/// The test PKI, as PEM files in a directory.
pub struct Pki {
    /// The root CA (`cacert.pem`), which also signs the endpoint.
    pub root_pem: PathBuf,
    root_der: rustls::pki_types::CertificateDer<'static>,
    root_key: String,
    server_der: rustls::pki_types::CertificateDer<'static>,
    server_key: Vec<u8>,
    /// The operator's sub-CA certificate and key (`user.pem`, `user.key`).
    pub operator_pem: PathBuf,
    /// The operator's sub-CA key, in PEM.
    pub operator_key: String,
    operator_der: rustls::pki_types::CertificateDer<'static>,
    /// A CA the endpoint does not know, and its key (for a refused client).
    pub stranger_pem: PathBuf,
    /// Its key, in PEM.
    pub stranger_key: String,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p
}

/// An endpoint certificate's parameters, as `albatross-client generate`
/// makes them (CN "server", no SAN), with EKU serverAuth or with no EKU.
fn server_params(server_auth: bool) -> CertificateParams {
    let mut sp = CertificateParams::default();
    sp.distinguished_name.push(DnType::CommonName, "server");
    sp.is_ca = IsCa::ExplicitNoCa;
    if server_auth {
        sp.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        sp.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    }
    sp
}

impl Pki {
    /// Makes one in `dir`.
    pub fn make(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let root = ca_params("test root").self_signed(&root_key).unwrap();
        let root_issuer_key_pem = root_key.serialize_pem();
        let root_issuer = Issuer::new(ca_params("test root"), root_key);
        let server_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let server = server_params(true).signed_by(&server_key, &root_issuer).unwrap();
        let operator_key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let operator = ca_params("deployer").signed_by(&operator_key, &root_issuer).unwrap();
        let stranger_key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let stranger = ca_params("stranger").self_signed(&stranger_key).unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        Pki {
            root_pem: write("cacert.pem", &root.pem()),
            root_der: root.der().clone(),
            root_key: root_issuer_key_pem,
            server_der: server.der().clone(),
            server_key: server_key.serialize_der(),
            operator_pem: write("user.pem", &operator.pem()),
            operator_key: operator_key.serialize_pem(),
            operator_der: operator.der().clone(),
            stranger_pem: write("stranger.pem", &stranger.pem()),
            stranger_key: stranger_key.serialize_pem(),
        }
    }

    /// An endpoint certificate that an operator could make with its own
    /// sub-CA (signed by the same root): a server-auth leaf under the
    /// operator's CA, sent with that CA as the intermediate; its key.
    pub fn operator_made_server(
        &self,
    ) -> (Vec<rustls::pki_types::CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>) {
        let issuer =
            Issuer::from_ca_cert_der(&self.operator_der, KeyPair::from_pem(&self.operator_key).unwrap()).unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let leaf = server_params(true).signed_by(&key, &issuer).unwrap();
        (
            vec![leaf.der().clone(), self.operator_der.clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
    }

    /// An endpoint certificate signed by the root itself but with no
    /// extended key usage (not made to be a server's).
    pub fn server_without_eku(
        &self,
    ) -> (Vec<rustls::pki_types::CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>) {
        let root_key = KeyPair::from_pem(&self.root_key).unwrap();
        let issuer = Issuer::from_ca_cert_der(&self.root_der, root_key).unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let leaf = server_params(false).signed_by(&key, &issuer).unwrap();
        (vec![leaf.der().clone()], rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
    }

    fn server_key_der(&self) -> rustls::pki_types::PrivateKeyDer<'static> {
        rustls::pki_types::PrivateKeyDer::Pkcs8(self.server_key.clone().into())
    }
}
