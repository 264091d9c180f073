//! A typed client for Rota's admin subjects (`rota.admin.{area}.{verb}`).
//!
//! Each request type of `rota_shared::admin` names its subject, its role and its reply type, so a
//! call cannot go to the wrong subject or be decoded as the wrong reply. Every request is sealed
//! with the client's admin token and every reply must be sealed with it too; what must stay
//! secret on the bus (an app's key, a new token) travels encrypted with the token's key.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use rota_shared::admin::{
    AdminRequest, AppCreate, AppInfo, AppRotateSecret, Role, TokenCreate, TokenInfo,
};
use rota_shared::{ErrorBody, ErrorCode, Subjects};
use rota_transport::keys::{
    APP_KEY_PURPOSE, TOKEN_PURPOSE, app_key, open_secret, random_text, seal_secret,
};
use rota_transport::{
    AdminToken, ConnectError, Connection, Credential, NatsOptions, RequestError, Scope, Stamper,
    Transport,
};
use thiserror::Error;

/// Why a call failed.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{0}")]
    Request(#[from] RequestError),
    #[error("{0}")]
    Other(String),
}

impl ClientError {
    /// The server's error code, for errors the server answered with (an unauthenticated
    /// answer's claim included, since a person reads it).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Request(e) => e.code(),
            _ => None,
        }
    }

    /// The server's error, for errors it answered with.
    pub fn remote(&self) -> Option<&ErrorBody> {
        match self {
            Self::Request(e) => e.remote(),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct AdminClient {
    transport: Transport,
    subjects: Subjects,
    timeout: Duration,
    /// Ask this server rather than whichever server answers first.
    server: Option<String>,
    credential: Option<Credential>,
}

/// The credential a token seals requests with. The sender is a fresh nonce per client, so that
/// two clients using one token keep apart in the servers' replay windows.
fn credential(token: &AdminToken) -> Result<Credential, ClientError> {
    let sender = random_text(9).map_err(|e| ClientError::Other(e.to_string()))?;
    Ok(Credential::new(
        Scope::Token {
            token_id: token.id().to_owned(),
        },
        token.key(),
        sender,
        Arc::new(Stamper::new()),
    ))
}

impl AdminClient {
    /// Connects to NATS. Fails fast when no NATS server answers.
    pub async fn connect(
        nats: &NatsOptions,
        prefix: &str,
        token: Option<&AdminToken>,
    ) -> Result<Self, ClientError> {
        let subjects = Subjects::new(prefix).map_err(|e| ClientError::Other(e.to_string()))?;
        let client = nats
            .connect(Connection::new("rota admin", subjects.admin_inbox()))
            .await?;
        let mut admin = Self::new(client, subjects);
        if let Some(token) = token {
            admin = admin.with_token(token)?;
        }
        Ok(admin)
    }

    /// A client on an existing connection, without a token (servers refuse it until
    /// [`Self::with_token`]).
    pub fn new(client: async_nats::Client, subjects: Subjects) -> Self {
        Self {
            transport: Transport::new(client),
            subjects,
            timeout: Duration::from_secs(15),
            server: None,
            credential: None,
        }
    }

    /// The same connection, sealing requests with `token`.
    pub fn with_token(&self, token: &AdminToken) -> Result<Self, ClientError> {
        Ok(Self {
            credential: Some(credential(token)?),
            ..self.clone()
        })
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
        Ok(self
            .transport
            .request(&subject, request, self.timeout, self.credential.as_ref())
            .await?)
    }

    fn token_key(&self) -> Result<&rota_transport::Key, ClientError> {
        self.credential
            .as_ref()
            .map(Credential::key)
            .ok_or_else(|| {
                ClientError::Other("this needs an admin token (--token or ROTA_TOKEN)".to_owned())
            })
    }

    /// The app key of `secret`, sealed for the server with the token's key. The secret itself
    /// never leaves this process.
    async fn sealed_app_key(&self, app: &str, secret: &str) -> Result<String, ClientError> {
        let (app_owned, secret) = (app.to_owned(), secret.to_owned());
        let key = tokio::task::spawn_blocking(move || app_key(&app_owned, &secret))
            .await
            .map_err(|e| ClientError::Other(e.to_string()))?
            .map_err(|e| ClientError::Other(format!("app secret: {e}")))?;
        seal_secret(self.token_key()?, APP_KEY_PURPOSE, key.expose())
            .map_err(|e| ClientError::Other(e.to_string()))
    }

    /// Creates an app whose workers present `secret`.
    pub async fn app_create(&self, name: &str, secret: &str) -> Result<AppInfo, ClientError> {
        let sealed_key = self.sealed_app_key(name, secret).await?;
        self.call(&AppCreate {
            name: name.to_owned(),
            sealed_key,
        })
        .await
    }

    /// Gives an app a new secret; the previous ones stay valid for `grace`.
    pub async fn app_rotate_secret(
        &self,
        name: &str,
        secret: &str,
        grace: Duration,
    ) -> Result<AppInfo, ClientError> {
        let sealed_key = self.sealed_app_key(name, secret).await?;
        self.call(&AppRotateSecret {
            name: name.to_owned(),
            sealed_key,
            grace_ms: u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
        })
        .await
    }

    /// Makes a new admin token; returns it with its description. It is shown only this once.
    pub async fn token_create(
        &self,
        role: Role,
        app: Option<&str>,
        description: &str,
    ) -> Result<(TokenInfo, AdminToken), ClientError> {
        let created = self
            .call(&TokenCreate {
                role,
                app: app.map(str::to_owned),
                description: description.to_owned(),
            })
            .await?;
        let text = open_secret(self.token_key()?, TOKEN_PURPOSE, &created.sealed_token)
            .map_err(|e| ClientError::Other(format!("the new token does not open: {e}")))?;
        let text = String::from_utf8(text).map_err(|e| ClientError::Other(e.to_string()))?;
        let token = AdminToken::parse(&text).map_err(|e| ClientError::Other(e.to_string()))?;
        Ok((created.info, token))
    }

    /// The underlying NATS connection.
    pub fn nats(&self) -> &async_nats::Client {
        self.transport.client()
    }

    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }
}
