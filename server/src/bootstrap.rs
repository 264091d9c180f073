//! What a deployment declares in its configuration and every server makes sure of at start: the
//! admin token its operators were handed, and the apps its workers serve. A Helm release or a
//! compose file can then bring a working cluster up without anyone running `token create` or
//! `app create` by hand.
//!
//! Only what is missing is created. A declared token that was revoked stays revoked, and an app
//! that exists keeps its secret (rotate it with `rota app rotate-secret`): a restart must never
//! undo what an operator did on purpose.

use rota_shared::admin::Role;
use rota_shared::subject::validate_token;
use rota_transport::{AdminToken, Key};

use crate::store::{Store, StoreError, StoredToken};

/// An app the deployment declares, with the key derived from its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredApp {
    pub name: String,
    pub key: Key,
}

/// What went wrong making sure of a declaration.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("declared app {name:?}: invalid name: {reason}")]
    AppName { name: String, reason: String },
    #[error(
        "the declared admin token {id} exists with another secret; give the token that was \
         issued under that id, or revoke it and declare a new one"
    )]
    TokenMismatch { id: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Creates the declared admin token and apps that do not exist yet.
pub async fn ensure_declared(
    store: &Store,
    token: Option<&AdminToken>,
    apps: &[DeclaredApp],
    now_ms: i64,
) -> Result<(), BootstrapError> {
    if let Some(token) = token {
        ensure_token(store, token, now_ms).await?;
    }
    for app in apps {
        validate_token(&app.name).map_err(|e| BootstrapError::AppName {
            name: app.name.clone(),
            reason: e.to_string(),
        })?;
        match store.create_app(&app.name, &app.key, now_ms).await {
            Ok(_) => tracing::info!(app = %app.name, "created the declared app"),
            // Made by an operator, an earlier start or another server starting now.
            Err(StoreError::AlreadyExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn ensure_token(
    store: &Store,
    token: &AdminToken,
    now_ms: i64,
) -> Result<(), BootstrapError> {
    let check = |stored: &StoredToken| {
        if stored.key != token.key() {
            return Err(BootstrapError::TokenMismatch {
                id: stored.id.clone(),
            });
        }
        if stored.revoked_at_ms.is_some() {
            tracing::warn!(token = %stored.id, "the declared admin token is revoked; it stays so");
        }
        Ok(())
    };
    match store.token(token.id()).await {
        Ok(stored) => return check(&stored),
        Err(StoreError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let stored = StoredToken {
        id: token.id().to_owned(),
        role: Role::Admin,
        app_id: None,
        description: "declared in the configuration".to_owned(),
        key: token.key(),
        created_at_ms: now_ms,
        revoked_at_ms: None,
    };
    match store.insert_token(&stored).await {
        Ok(()) => {
            tracing::info!(token = %stored.id, "created the declared admin token");
            Ok(())
        }
        // Another server starting at the same moment made it first.
        Err(StoreError::AlreadyExists(_)) => check(&store.token(token.id()).await?),
        Err(e) => Err(e.into()),
    }
}
