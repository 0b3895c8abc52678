//! A replication connection (`replication=database`) on the wire protocol: tokio-postgres
//! cannot speak CopyBoth, so this module frames messages itself and leaves message bodies to
//! `postgres-protocol`.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use etcd_sync_api::{TlsMode, TlsSettings};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::tls;

/// Where and as whom to connect; shared by the query and replication connections.
#[derive(Clone)]
pub struct ConnectParams {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    pub application_name: String,
    pub tls: TlsSettings,
}

impl std::fmt::Debug for ConnectParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectParams")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Session settings that make output functions print what [`crate::types`] expects, on the
/// COPY connections and the walsender alike.
pub const SESSION_SETTINGS: &[(&str, &str)] = &[
    ("DateStyle", "ISO"),
    ("IntervalStyle", "postgres"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "1"),
    ("bytea_output", "hex"),
    ("client_encoding", "UTF8"),
];

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("connection to {addr} failed: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("connection lost: {0}")]
    Io(#[from] io::Error),
    #[error("{severity} {code}: {message}{}", detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Server {
        severity: String,
        code: String,
        message: String,
        detail: Option<String>,
    },
    #[error("{0}")]
    Auth(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    /// TLS cannot be set up as configured (files, mode, the server's certificate or answer).
    #[error("TLS: {0}")]
    Tls(String),
}

impl ConnError {
    /// The SQLSTATE of a server error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ConnError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A raw backend message: its tag and body.
struct Frame {
    tag: u8,
    body: Bytes,
}

/// A plain or TLS byte stream.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The `SSLRequest` message: length 8, then the request code 1234.5679.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

pub struct ReplicationConnection {
    stream: Box<dyn Io>,
    read_buf: BytesMut,
    write_buf: BytesMut,
}

/// One row of a simple query's result, as text.
pub type TextRow = Vec<Option<String>>;

impl ReplicationConnection {
    pub async fn connect(params: &ConnectParams) -> Result<Self, ConnError> {
        let addr = format!("{}:{}", params.host, params.port);
        let stream = TcpStream::connect(&addr)
            .await
            .map_err(|source| ConnError::Connect { addr, source })?;
        stream.set_nodelay(true)?;
        let stream = negotiate_tls(stream, params).await?;
        let mut conn = Self {
            stream,
            read_buf: BytesMut::with_capacity(64 * 1024),
            write_buf: BytesMut::with_capacity(1024),
        };
        let options: String = SESSION_SETTINGS
            .iter()
            .map(|(name, value)| format!("-c {name}={value} "))
            .collect();
        let startup = [
            ("user", params.user.as_str()),
            ("database", params.database.as_str()),
            ("replication", "database"),
            ("application_name", params.application_name.as_str()),
            ("options", options.trim_end()),
        ];
        frontend::startup_message(startup.iter().copied(), &mut conn.write_buf)?;
        conn.flush().await?;
        conn.authenticate(params).await?;
        // Parameter statuses and the backend key until the server is ready.
        loop {
            let frame = conn.read_frame().await?;
            match frame.tag {
                b'Z' => return Ok(conn),
                b'E' => return Err(server_error(frame)),
                _ => {}
            }
        }
    }

    async fn authenticate(&mut self, params: &ConnectParams) -> Result<(), ConnError> {
        let password = || {
            params.password.as_deref().ok_or_else(|| {
                ConnError::Auth(format!(
                    "the server asks user {:?} for a password but database.password is not set",
                    params.user
                ))
            })
        };
        let mut scram: Option<sasl::ScramSha256> = None;
        loop {
            let frame = self.read_frame().await?;
            if frame.tag == b'E' {
                return Err(server_error(frame));
            }
            match parse(frame)? {
                backend::Message::AuthenticationOk => return Ok(()),
                backend::Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password()?.as_bytes(), &mut self.write_buf)?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    let hash =
                        md5_hash(params.user.as_bytes(), password()?.as_bytes(), body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.write_buf)?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut supported = false;
                    while let Some(mechanism) = mechanisms.next()? {
                        supported |= mechanism == sasl::SCRAM_SHA_256;
                    }
                    if !supported {
                        return Err(ConnError::Auth(
                            "the server offers no SASL mechanism this client supports (SCRAM-SHA-256)"
                                .into(),
                        ));
                    }
                    let state = sasl::ScramSha256::new(
                        password()?.as_bytes(),
                        sasl::ChannelBinding::unsupported(),
                    );
                    frontend::sasl_initial_response(
                        sasl::SCRAM_SHA_256,
                        state.message(),
                        &mut self.write_buf,
                    )?;
                    scram = Some(state);
                }
                backend::Message::AuthenticationSaslContinue(body) => {
                    let state = scram
                        .as_mut()
                        .ok_or_else(|| ConnError::Protocol("SASL continue before start".into()))?;
                    state.update(body.data())?;
                    frontend::sasl_response(state.message(), &mut self.write_buf)?;
                }
                backend::Message::AuthenticationSaslFinal(body) => {
                    let state = scram
                        .as_mut()
                        .ok_or_else(|| ConnError::Protocol("SASL final before start".into()))?;
                    state.finish(body.data())?;
                    continue;
                }
                _ => return Err(ConnError::Auth(
                    "the server asks for an authentication method this client does not support \
                         (use scram-sha-256, md5, password or trust in pg_hba.conf)"
                        .into(),
                )),
            }
            self.flush().await?;
        }
    }

    async fn flush(&mut self) -> Result<(), ConnError> {
        self.stream.write_all(&self.write_buf).await?;
        self.write_buf.clear();
        Ok(())
    }

    /// Reads one message. Cancel-safe: bytes read before a cancellation stay in the buffer.
    async fn read_frame(&mut self) -> Result<Frame, ConnError> {
        loop {
            if let Some(frame) = self.buffered_frame()? {
                return Ok(frame);
            }
            if self.stream.read_buf(&mut self.read_buf).await? == 0 {
                return Err(ConnError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                )));
            }
        }
    }

    /// The next message if the read buffer holds all of it; makes room for it otherwise.
    fn buffered_frame(&mut self) -> Result<Option<Frame>, ConnError> {
        if self.read_buf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([
            self.read_buf[1],
            self.read_buf[2],
            self.read_buf[3],
            self.read_buf[4],
        ]) as usize;
        if len < 4 {
            return Err(ConnError::Protocol(format!("message length {len}")));
        }
        if self.read_buf.len() <= len {
            self.read_buf.reserve(len + 1 - self.read_buf.len());
            return Ok(None);
        }
        let tag = self.read_buf[0];
        let mut frame = self.read_buf.split_to(len + 1);
        frame.advance(5);
        Ok(Some(Frame {
            tag,
            body: frame.freeze(),
        }))
    }

    /// Runs a simple query and returns the rows of its (last) result set as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<TextRow>, ConnError> {
        frontend::query(sql, &mut self.write_buf)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                b'Z' => break,
                b'E' => error = Some(server_error(frame)),
                b'D' => {
                    if let backend::Message::DataRow(row) = parse(frame)? {
                        let buffer = row.buffer();
                        let mut ranges = row.ranges();
                        let mut values = Vec::new();
                        while let Some(range) = ranges.next()? {
                            values.push(
                                range.map(|r| String::from_utf8_lossy(&buffer[r]).into_owned()),
                            );
                        }
                        rows.push(values);
                    }
                }
                b'T' => rows.clear(),
                _ => {}
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    /// Sends `START_REPLICATION` and waits for the server to enter CopyBoth mode.
    pub async fn start_replication(&mut self, sql: &str) -> Result<(), ConnError> {
        frontend::query(sql, &mut self.write_buf)?;
        self.flush().await?;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                b'W' => return Ok(()),
                b'E' => return Err(server_error(frame)),
                b'N' => {}
                other => {
                    return Err(ConnError::Protocol(format!(
                        "unexpected message {:?} after START_REPLICATION",
                        other as char
                    )))
                }
            }
        }
    }

    /// The next CopyData payload of the replication stream; `None` when the server ended it.
    /// Cancel-safe.
    pub async fn recv_copy_data(&mut self) -> Result<Option<Bytes>, ConnError> {
        loop {
            let frame = self.read_frame().await?;
            if let Some(data) = copy_data(frame)? {
                return Ok(data);
            }
        }
    }

    /// The next CopyData payload if it was read already, without waiting: `Some(None)` when
    /// the server ended the stream. Lets a reader take what one read brought in one go.
    pub fn buffered_copy_data(&mut self) -> Result<Option<Option<Bytes>>, ConnError> {
        while let Some(frame) = self.buffered_frame()? {
            if let Some(data) = copy_data(frame)? {
                return Ok(Some(data));
            }
        }
        Ok(None)
    }

    pub async fn send_copy_data(&mut self, data: &[u8]) -> Result<(), ConnError> {
        frontend::CopyData::new(data)?.write(&mut self.write_buf);
        self.flush().await
    }

    /// Ends the session politely; errors are irrelevant at that point.
    pub async fn terminate(mut self) {
        frontend::terminate(&mut self.write_buf);
        let _ = self.flush().await;
    }
}

/// A replication stream's message: `Some(Some(payload))` for CopyData, `Some(None)` for its
/// end, `None` for messages to skip.
fn copy_data(frame: Frame) -> Result<Option<Option<Bytes>>, ConnError> {
    match frame.tag {
        b'd' => Ok(Some(Some(frame.body))),
        b'c' => Ok(Some(None)),
        b'E' => Err(server_error(frame)),
        _ => Ok(None),
    }
}

/// Asks the server for TLS as `params.tls.mode` says and wraps the stream in it.
async fn negotiate_tls(
    mut stream: TcpStream,
    params: &ConnectParams,
) -> Result<Box<dyn Io>, ConnError> {
    let tls_err = |e: tls::TlsConfigError| ConnError::Tls(e.to_string());
    let Some(config) = tls::client_config(&params.tls).map_err(tls_err)? else {
        return Ok(Box::new(stream));
    };
    stream.write_all(&SSL_REQUEST).await?;
    // One byte, read unbuffered: anything after it must come through TLS (CVE-2021-23222).
    match stream.read_u8().await? {
        b'S' => {
            let name = tls::server_name(&params.host).map_err(tls_err)?;
            let tls_stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map_err(|e| match etcd_sync_api::tls_failure(&e) {
                    Some(reason) => ConnError::Tls(format!(
                        "the server's certificate was refused ({reason}); check database.tls"
                    )),
                    None => ConnError::Io(e),
                })?;
            Ok(Box::new(tls_stream))
        }
        b'N' if params.tls.mode == TlsMode::Prefer => Ok(Box::new(stream)),
        b'N' => Err(ConnError::Tls(format!(
            "database.tls.mode is {} but the server does not accept TLS: set ssl = on \
             (with ssl_cert_file and ssl_key_file) in postgresql.conf, or lower the mode",
            params.tls.mode
        ))),
        other => Err(ConnError::Protocol(format!(
            "unexpected answer {:?} to the TLS request",
            other as char
        ))),
    }
}

fn parse(frame: Frame) -> Result<backend::Message, ConnError> {
    let mut buf = BytesMut::with_capacity(frame.body.len() + 5);
    buf.extend_from_slice(&[frame.tag]);
    buf.extend_from_slice(&((frame.body.len() + 4) as u32).to_be_bytes());
    buf.extend_from_slice(&frame.body);
    backend::Message::parse(&mut buf)?
        .ok_or_else(|| ConnError::Protocol("incomplete message".into()))
}

fn server_error(frame: Frame) -> ConnError {
    let mut severity = String::from("ERROR");
    let mut code = String::new();
    let mut message = String::new();
    let mut detail = None;
    if let Ok(backend::Message::ErrorResponse(body)) = parse(frame) {
        let mut fields = body.fields();
        while let Ok(Some(field)) = fields.next() {
            let value = || String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                b'S' => severity = value(),
                b'C' => code = value(),
                b'M' => message = value(),
                b'D' => detail = Some(value()),
                _ => {}
            }
        }
    }
    ConnError::Server {
        severity,
        code,
        message,
        detail,
    }
}

/// Quotes an identifier for SQL and replication commands.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
