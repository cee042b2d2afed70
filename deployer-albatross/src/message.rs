//! Albatross's messages (its `src/vmm_asn.ml`, protocol version 5): the
//! wire header, commands (unikernel create/force-create/destroy/info/
//! restart/get, console subscribe, policy info/add), replies and failures,
//! and the value of the certificate extension that carries a command over
//! TLS. Decoding is strict: unknown tags and trailing bytes are errors.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;

use crate::wire::{self, bad, ctx, DecodeError, Node, Reader};

/// The protocol version this crate speaks (albatross ≥ 1.5 understands it;
/// ≥ 2.6 understands nothing else).
pub const VERSION: i64 = 5;

/// Why a name was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadName(pub String);

impl fmt::Display for BadName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadName {}

/// An albatross name: a path of labels and, for a unikernel, its label —
/// written `path:label` (`:hello` at the root, `user:hello` under `user`,
/// `:` for everything). Labels are 1 to 63 of `[a-z0-9.-]`, not starting
/// with `-` (upper case is folded to lower, as albatross does).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name {
    path: Vec<String>,
    label: Option<String>,
}

fn check_label(label: &str) -> Result<String, BadName> {
    let ok = !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(label.to_ascii_lowercase())
    } else {
        Err(BadName(format!(
            "{label:?} is not an albatross label (1 to 63 letters, digits, '-' or '.', not starting with '-')"
        )))
    }
}

impl Name {
    /// The unikernel `label` at the root (`:label`).
    pub fn unikernel(label: &str) -> Result<Name, BadName> {
        Ok(Name { path: Vec::new(), label: Some(check_label(label)?) })
    }

    /// Everything (`:`), as for `info` of all unikernels.
    pub fn root() -> Name {
        Name { path: Vec::new(), label: None }
    }

    /// Parses `path:label` (or a bare label, at the root).
    pub fn parse(s: &str) -> Result<Name, BadName> {
        let (path, label) = match s.rsplit_once(':') {
            Some((p, l)) => (p, l),
            None => ("", s),
        };
        let path = if path.is_empty() {
            Vec::new()
        } else {
            path.split(':').map(check_label).collect::<Result<Vec<_>, _>>()?
        };
        let label = if label.is_empty() { None } else { Some(check_label(label)?) };
        if !s.contains(':') && label.is_none() {
            return Err(BadName("an empty name".into()));
        }
        Ok(Name { path, label })
    }

    /// The unikernel's label, if the name has one.
    pub fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.path.join(":"), self.label.as_deref().unwrap_or(""))
    }
}

/// A message's header: the version, a sequence number, the name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The protocol version (5).
    pub version: i64,
    /// A sequence number (albatross's client sends 0).
    pub sequence: i64,
    /// What the message is about.
    pub name: Name,
}

impl Header {
    /// A version-5 header for `name`, sequence 0.
    pub fn new(name: Name) -> Header {
        Header { version: VERSION, sequence: 0, name }
    }
}

/// The virtual machine monitor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Typ {
    /// solo5 (`solo5-hvt`).
    Solo5,
    /// bhyve (FreeBSD).
    Bhyve,
}

/// What happens when a unikernel exits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailBehaviour {
    /// It stays stopped.
    Quit,
    /// It is restarted, on these exit codes (empty: any code but albatross's
    /// own argument and solo5 errors).
    Restart(BTreeSet<i64>),
}

/// A block device for a unikernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// The unikernel's name for it.
    pub name: String,
    /// The host's block device (albatross's name for it), if not `name`.
    pub host_device: Option<String>,
    /// Its sector size, if not the default.
    pub sector_size: Option<i64>,
}

/// A network interface of a unikernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bridge {
    /// The unikernel's name for it (`service`).
    pub netif: String,
    /// The host bridge (`br0`), if not `netif`.
    pub bridge: Option<String>,
    /// Its MAC address, if fixed.
    pub mac: Option<[u8; 6]>,
}

/// A unikernel's configuration, with its image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config<'a> {
    /// The monitor.
    pub typ: Typ,
    /// Whether `image` is zlib-compressed.
    pub compressed: bool,
    /// The image (empty when it is streamed after a TLS handshake).
    pub image: Cow<'a, [u8]>,
    /// Start priority (0 first), if set.
    pub startup: Option<i64>,
    /// Whether albatross adds `--name=<label>` to the arguments.
    pub add_name: bool,
    /// What happens when it exits.
    pub fail_behaviour: FailBehaviour,
    /// CPUs it may run on (not empty).
    pub cpuids: BTreeSet<i64>,
    /// Memory, in MB.
    pub memory: i64,
    /// Block devices.
    pub blocks: Vec<Block>,
    /// Network interfaces.
    pub bridges: Vec<Bridge>,
    /// Arguments (`--ipv4=…`).
    pub arguments: Vec<String>,
    /// CPUs (bhyve); albatross always writes it (1).
    pub cpus: Option<i64>,
    /// The Linux boot partition (bhyve), if any.
    pub linux_boot_partition: Option<String>,
}

/// Which encoding of create and force-create to use: the daemon's version
/// decides which it understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CreateVersion {
    /// `[20]`/`[21]` with the current config (albatross 2.7 and later).
    V27,
    /// `[16]`/`[17]` with the v4 config (2.6, and later ones).
    V26,
    /// `[9]`/`[10]` with the v3 config (1.5 to 2.7): one CPU, no startup,
    /// add-name always on.
    V15,
}

/// Which encoding of info to use (and which reply to expect).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InfoVersion {
    /// `[19]`, answered with `[13]` (2.7 and later).
    V27,
    /// `[18]`, answered with `[11]` (2.6 and later).
    V26,
    /// `[15]`, answered with `[9]` (2.4 and later).
    V24,
}

/// A unikernel command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnikernelCmd<'a> {
    /// Stop and remove it.
    Destroy,
    /// Create it (fails if one of that name runs).
    Create(CreateVersion, Config<'a>),
    /// Create it, replacing one of that name.
    ForceCreate(CreateVersion, Config<'a>),
    /// What runs (under the name).
    Info(InfoVersion),
    /// Its image, at this compression level.
    Get(i64),
    /// Restart it with its stored arguments.
    Restart,
}

/// How many console lines (or since when) to subscribe to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subscribe {
    /// Lines since this GeneralizedTime (`YYYYMMDDhhmmssZ`).
    Since(String),
    /// The last this many lines.
    Count(i64),
}

/// A policy: what a path of unikernels may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// CPUs.
    pub cpuids: Vec<i64>,
    /// How many unikernels.
    pub unikernels: i64,
    /// Memory, in MB.
    pub memory: i64,
    /// Block storage, in MB, if any.
    pub block: Option<i64>,
    /// Bridges.
    pub bridges: Vec<String>,
}

/// A command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// For a unikernel.
    Unikernel(UnikernelCmd<'a>),
    /// Subscribe to a console.
    ConsoleSubscribe(Subscribe),
    /// The policies.
    PolicyInfo,
    /// Add a policy (carried by a delegating certificate).
    PolicyAdd(Policy),
}

/// A running unikernel, as info describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    /// The monitor.
    pub typ: Typ,
    /// Start priority.
    pub startup: Option<i64>,
    /// What happens when it exits.
    pub fail_behaviour: FailBehaviour,
    /// CPUs.
    pub cpuids: BTreeSet<i64>,
    /// Memory, in MB.
    pub memory: i64,
    /// SHA-256 of the uncompressed image.
    pub digest: Vec<u8>,
    /// Block devices: (unikernel device, host device, sector size, size in MB).
    pub blocks: Vec<(String, String, i64, i64)>,
    /// Interfaces: (unikernel device, host bridge, MAC).
    pub bridges: Vec<(String, String, Vec<u8>)>,
    /// Arguments.
    pub arguments: Vec<String>,
    /// When it started (GeneralizedTime).
    pub started: Option<String>,
    /// CPUs (bhyve).
    pub cpus: Option<i64>,
    /// Linux boot partition.
    pub linux_boot_partition: Option<String>,
}

/// A successful reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Success {
    /// Nothing to say.
    Empty,
    /// A message ("created unikernel").
    String(String),
    /// What runs, by name, in the reply of one of the three info versions.
    UnikernelInfo(InfoVersion, Vec<(Name, Info)>),
    /// Another reply this crate does not interpret: its tag and content.
    Other(u8, Vec<u8>),
}

/// What a message carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    /// A command (client to daemon).
    Command(Command<'a>),
    /// A successful reply.
    Success(Success),
    /// A failure, in the daemon's words.
    Failure(String),
    /// A data frame (console output, statistics): its tag and content.
    Data(u8, Vec<u8>),
}

/// A message: header and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wire<'a> {
    /// The header.
    pub header: Header,
    /// The payload.
    pub payload: Payload<'a>,
}

// ---- encoding ----

fn typ_node(typ: Typ) -> Node<'static> {
    match typ {
        Typ::Solo5 => wire::tagged(0, wire::null()),
        Typ::Bhyve => wire::tagged(1, wire::null()),
    }
}

fn fail_node(f: &FailBehaviour) -> Node<'static> {
    match f {
        FailBehaviour::Quit => wire::tagged(0, wire::null()),
        FailBehaviour::Restart(codes) => wire::tagged(1, wire::set_of(codes.iter().map(|c| wire::int(*c)).collect())),
    }
}

fn cpuid_set(cpuids: &BTreeSet<i64>) -> Node<'static> {
    wire::set_of(cpuids.iter().map(|c| wire::int(*c)).collect())
}

fn blocks_node(blocks: &[Block]) -> Node<'_> {
    wire::tagged(
        0,
        wire::set_of(
            blocks
                .iter()
                .map(|b| {
                    let mut s = vec![wire::utf8(&b.name)];
                    if let Some(h) = &b.host_device {
                        s.push(wire::utf8(h));
                    }
                    if let Some(n) = b.sector_size {
                        s.push(wire::int(n));
                    }
                    wire::seq(s)
                })
                .collect(),
        ),
    )
}

fn bridges_node(bridges: &[Bridge]) -> Node<'_> {
    wire::tagged(
        1,
        wire::set_of(
            bridges
                .iter()
                .map(|b| {
                    let mut s = vec![wire::utf8(&b.netif)];
                    if let Some(br) = &b.bridge {
                        s.push(wire::utf8(br));
                    }
                    if let Some(mac) = &b.mac {
                        s.push(wire::octets(mac));
                    }
                    wire::seq(s)
                })
                .collect(),
        ),
    )
}

fn arguments_node(args: &[String]) -> Node<'_> {
    wire::tagged(2, wire::seq(args.iter().map(|a| wire::utf8(a)).collect()))
}

/// The fields of a config after the image, shared by its versions.
fn devices<'a>(c: &'a Config<'_>, out: &mut Vec<Node<'a>>) {
    if !c.blocks.is_empty() {
        out.push(blocks_node(&c.blocks));
    }
    if !c.bridges.is_empty() {
        out.push(bridges_node(&c.bridges));
    }
    if !c.arguments.is_empty() {
        out.push(arguments_node(&c.arguments));
    }
}

fn config_node<'a>(version: CreateVersion, c: &'a Config<'_>) -> Node<'a> {
    let first_cpu = c.cpuids.iter().next().copied().unwrap_or(0);
    let mut s = vec![typ_node(c.typ), wire::boolean(c.compressed), wire::octets(&c.image)];
    match version {
        CreateVersion::V27 => {
            if let Some(n) = c.startup {
                s.push(wire::int(n));
            }
            s.push(wire::boolean(c.add_name));
            s.push(fail_node(&c.fail_behaviour));
            s.push(cpuid_set(&c.cpuids));
            s.push(wire::int(c.memory));
            devices(c, &mut s);
            if let Some(n) = c.cpus {
                s.push(wire::tagged(3, wire::int(n)));
            }
            if let Some(p) = &c.linux_boot_partition {
                s.push(wire::tagged(4, wire::utf8(p)));
            }
        }
        CreateVersion::V26 => {
            if let Some(n) = c.startup {
                s.push(wire::int(n));
            }
            s.push(wire::boolean(c.add_name));
            s.push(fail_node(&c.fail_behaviour));
            s.push(wire::int(first_cpu));
            s.push(wire::int(c.memory));
            devices(c, &mut s);
        }
        CreateVersion::V15 => {
            s.push(fail_node(&c.fail_behaviour));
            s.push(wire::int(first_cpu));
            s.push(wire::int(c.memory));
            devices(c, &mut s);
        }
    }
    wire::seq(s)
}

fn create_tag(version: CreateVersion, force: bool) -> u8 {
    match (version, force) {
        (CreateVersion::V27, false) => 20,
        (CreateVersion::V27, true) => 21,
        (CreateVersion::V26, false) => 16,
        (CreateVersion::V26, true) => 17,
        (CreateVersion::V15, false) => 9,
        (CreateVersion::V15, true) => 10,
    }
}

fn info_tag(version: InfoVersion) -> u8 {
    match version {
        InfoVersion::V27 => 19,
        InfoVersion::V26 => 18,
        InfoVersion::V24 => 15,
    }
}

fn command_node<'a>(command: &'a Command<'_>) -> Node<'a> {
    match command {
        Command::Unikernel(cmd) => {
            let inner = match cmd {
                UnikernelCmd::Destroy => wire::tagged(3, wire::null()),
                UnikernelCmd::Create(v, c) => wire::tagged(create_tag(*v, false), config_node(*v, c)),
                UnikernelCmd::ForceCreate(v, c) => wire::tagged(create_tag(*v, true), config_node(*v, c)),
                UnikernelCmd::Info(v) => wire::tagged(info_tag(*v), wire::null()),
                UnikernelCmd::Get(level) => wire::tagged(11, wire::int(*level)),
                UnikernelCmd::Restart => wire::tagged(14, wire::tagged(0, wire::null())),
            };
            wire::tagged(3, inner)
        }
        Command::ConsoleSubscribe(sub) => {
            let choice = match sub {
                Subscribe::Since(t) => wire::tagged(0, Node::Prim(wire::GENERALIZED_TIME, Cow::Borrowed(t.as_bytes()))),
                Subscribe::Count(n) => wire::tagged(1, wire::int(*n)),
            };
            wire::tagged(0, wire::tagged(2, choice))
        }
        Command::PolicyInfo => wire::tagged(4, wire::tagged(0, wire::null())),
        Command::PolicyAdd(p) => {
            let mut s = vec![
                wire::seq(p.cpuids.iter().map(|c| wire::int(*c)).collect()),
                wire::int(p.unikernels),
                wire::int(p.memory),
            ];
            if let Some(b) = p.block {
                s.push(wire::int(b));
            }
            s.push(wire::seq(p.bridges.iter().map(|b| wire::utf8(b)).collect()));
            wire::tagged(4, wire::tagged(1, wire::seq(s)))
        }
    }
}

fn name_string(name: &Name) -> String {
    name.to_string()
}

/// A message too long for albatross's frame (its length in bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooLarge(pub usize);

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the message is {} bytes; albatross reads at most {} in one frame", self.0, i32::MAX)
    }
}

impl std::error::Error for TooLarge {}

impl Wire<'_> {
    /// The DER encoding.
    pub fn encode(&self) -> Vec<u8> {
        self.node_with(|node| node.to_vec())
    }

    /// The encoding with albatross's 4-byte big-endian length in front (as
    /// sent on a socket), built in one buffer. Albatross reads the length
    /// as a signed 32-bit number: a longer message is an error.
    pub fn encode_framed(&self) -> Result<Vec<u8>, TooLarge> {
        self.node_with(|node| {
            let len = node.encoded_len();
            let framed = i32::try_from(len).map_err(|_| TooLarge(len))?;
            Ok(node.to_vec_with_prefix(&framed.to_be_bytes()))
        })
    }

    fn node_with<R>(&self, f: impl FnOnce(&Node<'_>) -> R) -> R {
        let name = name_string(&self.header.name);
        let header =
            wire::seq(vec![wire::int(self.header.version), wire::int64(self.header.sequence), wire::utf8(&name)]);
        let payload = match &self.payload {
            Payload::Command(c) => wire::tagged(0, command_node(c)),
            Payload::Success(s) => wire::tagged(1, success_node(s)),
            Payload::Failure(m) => wire::tagged(2, wire::utf8(m)),
            Payload::Data(tag, content) => wire::tagged(3, Node::Prim(*tag, Cow::Borrowed(content))),
        };
        f(&wire::seq(vec![header, payload]))
    }
}

fn success_node(s: &Success) -> Node<'_> {
    match s {
        Success::Empty => wire::tagged(0, wire::null()),
        Success::String(m) => wire::tagged(1, wire::utf8(m)),
        Success::UnikernelInfo(version, list) => wire::tagged(
            match version {
                InfoVersion::V27 => 13,
                InfoVersion::V26 => 11,
                InfoVersion::V24 => 9,
            },
            wire::seq(
                list.iter()
                    .map(|(name, info)| {
                        wire::seq(vec![
                            Node::Prim(wire::UTF8_STRING, Cow::Owned(name.to_string().into_bytes())),
                            info_node(*version, info),
                        ])
                    })
                    .collect(),
            ),
        ),
        Success::Other(tag, content) => Node::Prim(ctx(*tag), Cow::Borrowed(content)),
    }
}

fn info_node(version: InfoVersion, i: &Info) -> Node<'_> {
    let mut s = vec![typ_node(i.typ)];
    if version != InfoVersion::V24 {
        if let Some(n) = i.startup {
            s.push(wire::int(n));
        }
    }
    s.push(fail_node(&i.fail_behaviour));
    if version == InfoVersion::V27 {
        s.push(cpuid_set(&i.cpuids));
    } else {
        s.push(wire::int(i.cpuids.iter().next().copied().unwrap_or(0)));
    }
    s.push(wire::int(i.memory));
    s.push(wire::octets(&i.digest));
    if !i.blocks.is_empty() {
        s.push(wire::tagged(
            0,
            wire::set_of(
                i.blocks
                    .iter()
                    .map(|(u, h, sector, size)| {
                        wire::seq(vec![wire::utf8(u), wire::utf8(h), wire::int(*sector), wire::int(*size)])
                    })
                    .collect(),
            ),
        ));
    }
    if !i.bridges.is_empty() {
        s.push(wire::tagged(
            1,
            wire::set_of(
                i.bridges
                    .iter()
                    .map(|(u, h, mac)| wire::seq(vec![wire::utf8(u), wire::utf8(h), wire::octets(mac)]))
                    .collect(),
            ),
        ));
    }
    if !i.arguments.is_empty() {
        s.push(arguments_node(&i.arguments));
    }
    if let Some(t) = &i.started {
        s.push(wire::tagged(3, Node::Prim(wire::GENERALIZED_TIME, Cow::Borrowed(t.as_bytes()))));
    }
    if version == InfoVersion::V27 {
        if let Some(n) = i.cpus {
            s.push(wire::tagged(4, wire::int(n)));
        }
        if let Some(p) = &i.linux_boot_partition {
            s.push(wire::tagged(5, wire::utf8(p)));
        }
    }
    wire::seq(s)
}

/// The value of the certificate extension 1.3.6.1.4.1.49836.42:
/// `SEQUENCE { INTEGER version, Command }`.
pub fn cert_extension(command: &Command<'_>) -> Vec<u8> {
    wire::seq(vec![wire::int(VERSION), command_node(command)]).to_vec()
}

// ---- decoding ----

fn decode_name(s: &str) -> Result<Name, DecodeError> {
    Name::parse(s).map_err(|e| DecodeError(format!("the name {s:?}: {e}")))
}

fn decode_typ(r: &mut Reader<'_>) -> Result<Typ, DecodeError> {
    match r.any()? {
        (t, c) if t == ctx(0) => {
            Reader::new(c).null("solo5")?;
            Ok(Typ::Solo5)
        }
        (t, c) if t == ctx(1) => {
            Reader::new(c).null("bhyve")?;
            Ok(Typ::Bhyve)
        }
        (t, _) => bad(format!("typ: unknown tag {t:#04x}")),
    }
}

fn decode_ints(content: &[u8], what: &str) -> Result<Vec<i64>, DecodeError> {
    let mut r = Reader::new(content);
    let mut out = Vec::new();
    while !r.is_empty() {
        out.push(r.int(what)?);
    }
    Ok(out)
}

fn decode_fail(r: &mut Reader<'_>) -> Result<FailBehaviour, DecodeError> {
    match r.any()? {
        (t, c) if t == ctx(0) => {
            Reader::new(c).null("quit")?;
            Ok(FailBehaviour::Quit)
        }
        (t, c) if t == ctx(1) => {
            let mut inner = Reader::new(c);
            let set = inner.expect(wire::SET, "exit codes")?;
            inner.finish("exit codes")?;
            Ok(FailBehaviour::Restart(decode_ints(set, "an exit code")?.into_iter().collect()))
        }
        (t, _) => bad(format!("fail-behaviour: unknown tag {t:#04x}")),
    }
}

fn decode_strings(content: &[u8], what: &str) -> Result<Vec<String>, DecodeError> {
    let mut r = Reader::new(content);
    let mut out = Vec::new();
    while !r.is_empty() {
        out.push(r.utf8(what)?.to_owned());
    }
    Ok(out)
}

/// Reads `[n] X` if present, giving X's reader (which must then be read
/// completely).
fn explicit_opt<'a>(r: &mut Reader<'a>, n: u8) -> Result<Option<Reader<'a>>, DecodeError> {
    Ok(r.optional(ctx(n))?.map(Reader::new))
}

fn decode_config_devices(r: &mut Reader<'_>, c: &mut Config<'_>) -> Result<(), DecodeError> {
    if let Some(mut b) = explicit_opt(r, 0)? {
        let set = b.set_elements("blocks")?;
        b.finish("blocks")?;
        for mut element in set {
            let mut s = element.nested(wire::SEQUENCE, "a block")?;
            let name = s.utf8("a block's name")?.to_owned();
            let host_device =
                if s.peek() == Some(wire::UTF8_STRING) { Some(s.utf8("host device")?.to_owned()) } else { None };
            let sector_size = if s.peek() == Some(wire::INTEGER) { Some(s.int("sector size")?) } else { None };
            s.finish("a block")?;
            c.blocks.push(Block { name, host_device, sector_size });
        }
    }
    if let Some(mut b) = explicit_opt(r, 1)? {
        let set = b.set_elements("bridges")?;
        b.finish("bridges")?;
        for mut element in set {
            let mut s = element.nested(wire::SEQUENCE, "a bridge")?;
            let netif = s.utf8("a bridge's netif")?.to_owned();
            let bridge = if s.peek() == Some(wire::UTF8_STRING) { Some(s.utf8("bridge")?.to_owned()) } else { None };
            let mac = match s.optional(wire::OCTET_STRING)? {
                Some(m) => Some(<[u8; 6]>::try_from(m).map_err(|_| DecodeError("a MAC must be 6 bytes".into()))?),
                None => None,
            };
            s.finish("a bridge")?;
            c.bridges.push(Bridge { netif, bridge, mac });
        }
    }
    if let Some(mut a) = explicit_opt(r, 2)? {
        let seq = a.expect(wire::SEQUENCE, "arguments")?;
        a.finish("arguments")?;
        c.arguments = decode_strings(seq, "an argument")?;
    }
    Ok(())
}

fn decode_config<'a>(version: CreateVersion, content: &'a [u8]) -> Result<Config<'a>, DecodeError> {
    let mut r = Reader::new(content);
    let typ = decode_typ(&mut r)?;
    let compressed = r.boolean("compressed")?;
    let image = Cow::Borrowed(r.octets("image")?);
    let mut c = Config {
        typ,
        compressed,
        image,
        startup: None,
        add_name: true,
        fail_behaviour: FailBehaviour::Quit,
        cpuids: BTreeSet::new(),
        memory: 0,
        blocks: Vec::new(),
        bridges: Vec::new(),
        arguments: Vec::new(),
        cpus: None,
        linux_boot_partition: None,
    };
    if version != CreateVersion::V15 {
        if r.peek() == Some(wire::INTEGER) {
            c.startup = Some(r.int("startup")?);
        }
        c.add_name = r.boolean("add-name")?;
    }
    c.fail_behaviour = decode_fail(&mut r)?;
    match version {
        CreateVersion::V27 => {
            let set = r.expect(wire::SET, "cpuids")?;
            c.cpuids = decode_ints(set, "a cpuid")?.into_iter().collect();
        }
        _ => {
            c.cpuids = BTreeSet::from([r.int("cpuid")?]);
        }
    }
    c.memory = r.int("memory")?;
    decode_config_devices(&mut r, &mut c)?;
    if version == CreateVersion::V27 {
        if let Some(mut n) = explicit_opt(&mut r, 3)? {
            c.cpus = Some(n.int("cpus")?);
            n.finish("cpus")?;
        }
        if let Some(mut p) = explicit_opt(&mut r, 4)? {
            c.linux_boot_partition = Some(p.utf8("linux boot partition")?.to_owned());
            p.finish("linux boot partition")?;
        }
    }
    r.finish("a unikernel config")?;
    Ok(c)
}

fn decode_unikernel_cmd(tag: u8, content: &[u8]) -> Result<UnikernelCmd<'_>, DecodeError> {
    let null = |what: &str| -> Result<(), DecodeError> {
        let mut r = Reader::new(content);
        r.null(what)?;
        r.finish(what)
    };
    let config = |v| -> Result<Config<'_>, DecodeError> {
        let mut r = Reader::new(content);
        let seq = r.expect(wire::SEQUENCE, "a config")?;
        r.finish("a config")?;
        decode_config(v, seq)
    };
    Ok(match tag {
        3 => {
            null("destroy")?;
            UnikernelCmd::Destroy
        }
        9 => UnikernelCmd::Create(CreateVersion::V15, config(CreateVersion::V15)?),
        10 => UnikernelCmd::ForceCreate(CreateVersion::V15, config(CreateVersion::V15)?),
        16 => UnikernelCmd::Create(CreateVersion::V26, config(CreateVersion::V26)?),
        17 => UnikernelCmd::ForceCreate(CreateVersion::V26, config(CreateVersion::V26)?),
        20 => UnikernelCmd::Create(CreateVersion::V27, config(CreateVersion::V27)?),
        21 => UnikernelCmd::ForceCreate(CreateVersion::V27, config(CreateVersion::V27)?),
        15 | 18 | 19 => {
            null("info")?;
            UnikernelCmd::Info(match tag {
                15 => InfoVersion::V24,
                18 => InfoVersion::V26,
                _ => InfoVersion::V27,
            })
        }
        11 => {
            let mut r = Reader::new(content);
            let level = r.int("compression level")?;
            r.finish("get")?;
            UnikernelCmd::Get(level)
        }
        14 => {
            let mut r = Reader::new(content);
            let mut none = r.explicit(0, "restart (only without new arguments)")?;
            none.null("restart")?;
            none.finish("restart")?;
            r.finish("restart")?;
            UnikernelCmd::Restart
        }
        t => return bad(format!("unknown unikernel command [{t}]")),
    })
}

fn decode_command(content: &[u8]) -> Result<Command<'_>, DecodeError> {
    let mut r = Reader::new(content);
    let (tag, inner) = r.any()?;
    r.finish("a command")?;
    decode_command_parts(tag, inner)
}

/// A command from its tag (`[0]` console, `[3]` unikernel, …) and content.
fn decode_command_parts(tag: u8, inner: &[u8]) -> Result<Command<'_>, DecodeError> {
    let mut inner_r = Reader::new(inner);
    let (sub, sub_content) = inner_r.any()?;
    inner_r.finish("a command")?;
    if sub & 0xe0 != 0xa0 {
        return bad(format!("a command's alternative has tag {sub:#04x}"));
    }
    let sub = sub & 0x1f;
    match tag {
        t if t == ctx(3) => Ok(Command::Unikernel(decode_unikernel_cmd(sub, sub_content)?)),
        t if t == ctx(0) && sub == 2 => {
            let mut r = Reader::new(sub_content);
            let (choice, c) = r.any()?;
            r.finish("subscribe")?;
            let mut cr = Reader::new(c);
            let value = match choice {
                x if x == ctx(0) => {
                    let t = cr.expect(wire::GENERALIZED_TIME, "since")?;
                    Subscribe::Since(
                        String::from_utf8(t.to_vec()).map_err(|_| DecodeError("a time is not ASCII".into()))?,
                    )
                }
                x if x == ctx(1) => Subscribe::Count(cr.int("count")?),
                x => return bad(format!("subscribe: unknown tag {x:#04x}")),
            };
            cr.finish("subscribe")?;
            Ok(Command::ConsoleSubscribe(value))
        }
        t if t == ctx(4) && sub == 0 => {
            let mut r = Reader::new(sub_content);
            r.null("policy info")?;
            r.finish("policy info")?;
            Ok(Command::PolicyInfo)
        }
        t if t == ctx(4) && sub == 1 => {
            let mut r = Reader::new(sub_content);
            let mut s = r.nested(wire::SEQUENCE, "a policy")?;
            r.finish("a policy")?;
            let cpuids = decode_ints(s.expect(wire::SEQUENCE, "cpuids")?, "a cpuid")?;
            let unikernels = s.int("unikernels")?;
            let memory = s.int("memory")?;
            let block = if s.peek() == Some(wire::INTEGER) { Some(s.int("block")?) } else { None };
            let bridges = decode_strings(s.expect(wire::SEQUENCE, "bridges")?, "a bridge")?;
            s.finish("a policy")?;
            Ok(Command::PolicyAdd(Policy { cpuids, unikernels, memory, block, bridges }))
        }
        t => bad(format!("unsupported command [{}] [{sub}]", t & 0x1f)),
    }
}

fn decode_info(version: InfoVersion, content: &[u8]) -> Result<Info, DecodeError> {
    let mut r = Reader::new(content);
    let typ = decode_typ(&mut r)?;
    let startup =
        if version != InfoVersion::V24 && r.peek() == Some(wire::INTEGER) { Some(r.int("startup")?) } else { None };
    let fail_behaviour = decode_fail(&mut r)?;
    let cpuids = match version {
        InfoVersion::V27 => decode_ints(r.expect(wire::SET, "cpuids")?, "a cpuid")?.into_iter().collect(),
        _ => BTreeSet::from([r.int("cpuid")?]),
    };
    let memory = r.int("memory")?;
    let digest = r.octets("digest")?.to_vec();
    let mut info = Info {
        typ,
        startup,
        fail_behaviour,
        cpuids,
        memory,
        digest,
        blocks: Vec::new(),
        bridges: Vec::new(),
        arguments: Vec::new(),
        started: None,
        cpus: None,
        linux_boot_partition: None,
    };
    if let Some(mut b) = explicit_opt(&mut r, 0)? {
        let set = b.set_elements("blocks")?;
        b.finish("blocks")?;
        for mut element in set {
            let mut s = element.nested(wire::SEQUENCE, "a block")?;
            let entry = (
                s.utf8("device")?.to_owned(),
                s.utf8("host device")?.to_owned(),
                s.int("sector size")?,
                s.int("size")?,
            );
            s.finish("a block")?;
            info.blocks.push(entry);
        }
    }
    if let Some(mut b) = explicit_opt(&mut r, 1)? {
        let set = b.set_elements("bridges")?;
        b.finish("bridges")?;
        for mut element in set {
            let mut s = element.nested(wire::SEQUENCE, "a bridge")?;
            let entry = (s.utf8("device")?.to_owned(), s.utf8("host device")?.to_owned(), s.octets("mac")?.to_vec());
            s.finish("a bridge")?;
            info.bridges.push(entry);
        }
    }
    if let Some(mut a) = explicit_opt(&mut r, 2)? {
        info.arguments = decode_strings(a.expect(wire::SEQUENCE, "arguments")?, "an argument")?;
        a.finish("arguments")?;
    }
    if let Some(mut t) = explicit_opt(&mut r, 3)? {
        let time = t.expect(wire::GENERALIZED_TIME, "started")?;
        t.finish("started")?;
        info.started = Some(String::from_utf8(time.to_vec()).map_err(|_| DecodeError("a time is not ASCII".into()))?);
    }
    if version == InfoVersion::V27 {
        if let Some(mut n) = explicit_opt(&mut r, 4)? {
            info.cpus = Some(n.int("cpus")?);
            n.finish("cpus")?;
        }
        if let Some(mut p) = explicit_opt(&mut r, 5)? {
            info.linux_boot_partition = Some(p.utf8("linux boot partition")?.to_owned());
            p.finish("linux boot partition")?;
        }
    }
    r.finish("a unikernel's info")?;
    Ok(info)
}

fn decode_success(content: &[u8]) -> Result<Success, DecodeError> {
    let mut r = Reader::new(content);
    let (tag, inner) = r.any()?;
    r.finish("a reply")?;
    let mut ir = Reader::new(inner);
    let info_version = match tag {
        t if t == ctx(13) => Some(InfoVersion::V27),
        t if t == ctx(11) => Some(InfoVersion::V26),
        t if t == ctx(9) => Some(InfoVersion::V24),
        _ => None,
    };
    if let Some(version) = info_version {
        let mut list = ir.nested(wire::SEQUENCE, "unikernel info")?;
        ir.finish("unikernel info")?;
        let mut out = Vec::new();
        while !list.is_empty() {
            let mut pair = list.nested(wire::SEQUENCE, "a unikernel")?;
            let name = decode_name(pair.utf8("a unikernel's name")?)?;
            let info = decode_info(version, pair.expect(wire::SEQUENCE, "a unikernel's info")?)?;
            pair.finish("a unikernel")?;
            out.push((name, info));
        }
        return Ok(Success::UnikernelInfo(version, out));
    }
    match tag {
        t if t == ctx(0) => {
            ir.null("empty")?;
            ir.finish("empty")?;
            Ok(Success::Empty)
        }
        t if t == ctx(1) => {
            let s = ir.utf8("a message")?.to_owned();
            ir.finish("a message")?;
            Ok(Success::String(s))
        }
        t if t & 0xe0 == 0xa0 => Ok(Success::Other(t & 0x1f, inner.to_vec())),
        t => bad(format!("a reply with tag {t:#04x}")),
    }
}

impl<'a> Wire<'a> {
    /// Decodes one message (without its length prefix). Strict: every byte
    /// must belong to the message.
    pub fn decode(bytes: &'a [u8]) -> Result<Wire<'a>, DecodeError> {
        let mut top = Reader::new(bytes);
        let mut msg = top.nested(wire::SEQUENCE, "a message")?;
        top.finish("the message")?;
        let mut h = msg.nested(wire::SEQUENCE, "the header")?;
        let version = h.int("the version")?;
        if version != VERSION {
            return bad(format!("protocol version {version} (only {VERSION} is spoken)"));
        }
        let sequence = h.int64("the sequence")?;
        let name = decode_name(h.utf8("the name")?)?;
        h.finish("the header")?;
        let (tag, content) = msg.any()?;
        msg.finish("the message")?;
        let mut c = Reader::new(content);
        let payload = match tag {
            t if t == ctx(0) => Payload::Command(decode_command(content)?),
            t if t == ctx(1) => Payload::Success(decode_success(content)?),
            t if t == ctx(2) => {
                let m = c.utf8("a failure")?.to_owned();
                c.finish("a failure")?;
                Payload::Failure(m)
            }
            t if t == ctx(3) => {
                let (dt, dc) = c.any()?;
                c.finish("data")?;
                Payload::Data(dt, dc.to_vec())
            }
            t => return bad(format!("a payload with tag {t:#04x}")),
        };
        Ok(Wire { header: Header { version, sequence, name }, payload })
    }
}

/// Decodes the value of the certificate extension.
pub fn decode_cert_extension(bytes: &[u8]) -> Result<Command<'_>, DecodeError> {
    let mut top = Reader::new(bytes);
    let mut s = top.nested(wire::SEQUENCE, "the extension")?;
    top.finish("the extension")?;
    let version = s.int("the version")?;
    if version != VERSION {
        return bad(format!("extension version {version}"));
    }
    let (tag, content) = s.any()?;
    s.finish("the extension")?;
    decode_command_parts(tag, content)
}

/// A config that owns its image.
fn owned(c: Config<'_>) -> Config<'static> {
    Config { image: Cow::Owned(c.image.into_owned()), ..c }
}

impl Config<'_> {
    /// This config owning its image.
    pub fn into_owned(self) -> Config<'static> {
        owned(self)
    }
}

impl Wire<'_> {
    /// This message owning everything it holds.
    pub fn into_owned(self) -> Wire<'static> {
        let payload = match self.payload {
            Payload::Command(c) => Payload::Command(c.into_owned()),
            Payload::Success(s) => Payload::Success(s),
            Payload::Failure(f) => Payload::Failure(f),
            Payload::Data(t, d) => Payload::Data(t, d),
        };
        Wire { header: self.header, payload }
    }
}

impl Command<'_> {
    /// This command owning its image, if it has one.
    pub fn into_owned(self) -> Command<'static> {
        match self {
            Command::Unikernel(u) => Command::Unikernel(match u {
                UnikernelCmd::Create(v, c) => UnikernelCmd::Create(v, c.into_owned()),
                UnikernelCmd::ForceCreate(v, c) => UnikernelCmd::ForceCreate(v, c.into_owned()),
                UnikernelCmd::Destroy => UnikernelCmd::Destroy,
                UnikernelCmd::Info(v) => UnikernelCmd::Info(v),
                UnikernelCmd::Get(l) => UnikernelCmd::Get(l),
                UnikernelCmd::Restart => UnikernelCmd::Restart,
            }),
            Command::ConsoleSubscribe(s) => Command::ConsoleSubscribe(s),
            Command::PolicyInfo => Command::PolicyInfo,
            Command::PolicyAdd(p) => Command::PolicyAdd(p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `albatross_der` fuzz target: a create command whose
    /// bridges (a SET OF) came in another order than DER's decoded to a
    /// value that encoding reordered, so decode → encode → decode changed
    /// it. A SET OF now decodes in DER's order, whatever the wire's.
    #[test]
    fn a_set_of_decodes_in_ders_order_whatever_order_it_came_in() {
        let hex = "3081d33015020105040800000002000000000c063a68656c6c6fa081b9a381b6b581b33081b0a002050001010004107f454c462d706c616365686f6c64657202010a0101ffa10c310a020180020102020200ff31060201000201fe020140a01d311b30190c0773746f726167650c0a68656c6c6f2d6461746102021000a12d312b30160c07736572766963650c0362723004060030160c077330110c0f6d616e6167651d65740c6e03627231a22330210c122d2d697076343d31302e302e302e322f32340c022d6c0c072a3a6465627567a303020101";
        let bytes: Vec<u8> =
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        let wire = Wire::decode(&bytes).expect("the fuzzer's message decodes");
        let again = wire.encode();
        assert_ne!(again, bytes, "the message came in non-DER order");
        assert_eq!(Wire::decode(&again).unwrap(), wire);
        let Payload::Command(Command::Unikernel(UnikernelCmd::ForceCreate(_, config))) = &wire.payload else {
            panic!("{wire:?}")
        };
        // Sorted by encoding: the shorter SEQUENCE (0x30 0x11 …) first.
        assert!(config.bridges[0].netif.starts_with("manage"), "{:?}", config.bridges);
    }
}
