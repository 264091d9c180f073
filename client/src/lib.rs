//! A typed client for Rota's admin subjects (`rota.admin.{area}.{verb}`).
//!
//! Each request type of `rota_shared::admin` names its subject and reply type, so a call cannot
//! go to the wrong subject or be decoded as the wrong reply.
#![forbid(unsafe_code)]

use std::time::Duration;

use async_nats::client::RequestErrorKind;
use rota_shared::admin::AdminRequest;
use rota_shared::envelope::decode_reply;
use rota_shared::{ErrorBody, ErrorCode, PROTOCOL_HEADER, PROTOCOL_VERSION, Subjects};
use thiserror::Error;

/// Why a call failed.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot connect to NATS at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("no Rota server answers on {subject} (is `rota server` running with the same prefix?)")]
    NoServer { subject: String },
    #[error("no answer on {subject} within {timeout:?}")]
    TimedOut { subject: String, timeout: Duration },
    #[error("{0}")]
    Server(ErrorBody),
    #[error("{0}")]
    Other(String),
}

impl ClientError {
    /// The server's error code, for errors the server answered with.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Server(e) => Some(e.code),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct AdminClient {
    client: async_nats::Client,
    subjects: Subjects,
    timeout: Duration,
    /// Ask this server rather than whichever server answers first.
    server: Option<String>,
}

impl AdminClient {
    /// Connects to NATS. Fails fast when no NATS server answers.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, ClientError> {
        let subjects = Subjects::new(prefix).map_err(|e| ClientError::Other(e.to_string()))?;
        let client = async_nats::ConnectOptions::new()
            .name("rota admin")
            .connection_timeout(Duration::from_secs(3))
            .connect(url)
            .await
            .map_err(|e| ClientError::Connect {
                url: url.to_owned(),
                message: e.to_string(),
            })?;
        Ok(Self::new(client, subjects))
    }

    pub fn new(client: async_nats::Client, subjects: Subjects) -> Self {
        Self {
            client,
            subjects,
            timeout: Duration::from_secs(15),
            server: None,
        }
    }

    /// A client whose requests go to one server (`rota.srv.{sid}.admin.*`) instead of the
    /// servers' queue group. Operations that need an app's owner are still forwarded to it.
    pub fn at_server(&self, server_id: &str) -> Self {
        Self {
            server: Some(server_id.to_owned()),
            ..self.clone()
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends one admin request and decodes its reply.
    pub async fn call<R: AdminRequest>(&self, request: &R) -> Result<R::Reply, ClientError> {
        let subject = match &self.server {
            Some(sid) => self.subjects.server_admin(sid, R::AREA, R::VERB),
            None => self.subjects.admin(R::AREA, R::VERB),
        };
        let payload = serde_json::to_vec(request).map_err(|e| ClientError::Other(e.to_string()))?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(PROTOCOL_HEADER, PROTOCOL_VERSION.to_string().as_str());
        let req = async_nats::Request::new()
            .payload(payload.into())
            .headers(headers)
            .timeout(Some(self.timeout));
        let msg = self
            .client
            .send_request(subject.clone(), req)
            .await
            .map_err(|e| match e.kind() {
                RequestErrorKind::NoResponders => ClientError::NoServer {
                    subject: subject.clone(),
                },
                RequestErrorKind::TimedOut => ClientError::TimedOut {
                    subject: subject.clone(),
                    timeout: self.timeout,
                },
                _ => ClientError::Other(e.to_string()),
            })?;
        decode_reply::<R::Reply>(&msg.payload).map_err(ClientError::Server)
    }

    /// The underlying NATS connection.
    pub fn nats(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }
}
