//! Delivery to gateways: the [`Delivery`] contract every gateway fulfils and
//! [`Target`], the one a [`crate::sync::Syncer`] delivers to. Each gateway is a
//! module of its own: [`envoy`] (the ECDS file and the filter module it names,
//! see [`wasm`]) and [`kong`] (the declarative configuration and the Admin API).
//! Revisions are recorded per target (`tg_revisions.target`, [`Delivery::name`]),
//! so one sidecar per gateway can share a schema.

use std::future::Future;

pub mod envoy;
pub mod kong;
pub mod wasm;

pub use envoy::{EnvoyDeliveryError, EnvoyTarget, TARGET_ENVOY};
pub use kong::{KongDeliveryError, KongTarget, TARGET_KONG};

/// What a gateway's delivery does with a rendered plugin document.
pub trait Delivery {
    /// The `tg_revisions.target` value.
    fn name(&self) -> &'static str;

    /// Refuses, before any revision is delivered, what no document could fix
    /// (Envoy: a `--wasm` module that is not valid WebAssembly).
    fn preflight(&self) -> Result<(), DeliveryError>;

    /// Delivers `document` (carrying `revision`); resolves to whether the
    /// gateway (or its file) changed.
    fn deliver(
        &self,
        document: &str,
        revision: &str,
    ) -> impl Future<Output = Result<bool, DeliveryError>> + Send;

    /// Re-delivers the deployed revision when the gateway may have lost it
    /// (a file deleted, a restarted DB-less Kong); resolves to whether it
    /// delivered again.
    fn ensure(
        &self,
        document: &str,
        revision: &str,
    ) -> impl Future<Output = Result<bool, DeliveryError>> + Send;
}

/// Why delivering to a gateway failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(transparent)]
    Envoy(#[from] EnvoyDeliveryError),
    #[error(transparent)]
    Kong(#[from] KongDeliveryError),
}

/// The gateway a [`crate::sync::Syncer`] delivers to.
#[derive(Debug, Clone)]
pub enum Target {
    Envoy(EnvoyTarget),
    Kong(Box<KongTarget>),
}

impl From<EnvoyTarget> for Target {
    fn from(target: EnvoyTarget) -> Self {
        Self::Envoy(target)
    }
}

impl From<KongTarget> for Target {
    fn from(target: KongTarget) -> Self {
        Self::Kong(Box::new(target))
    }
}

impl Delivery for Target {
    fn name(&self) -> &'static str {
        match self {
            Self::Envoy(envoy) => envoy.name(),
            Self::Kong(kong) => kong.name(),
        }
    }

    fn preflight(&self) -> Result<(), DeliveryError> {
        match self {
            Self::Envoy(envoy) => envoy.preflight(),
            Self::Kong(kong) => kong.preflight(),
        }
    }

    async fn deliver(&self, document: &str, revision: &str) -> Result<bool, DeliveryError> {
        match self {
            Self::Envoy(envoy) => Delivery::deliver(envoy, document, revision).await,
            Self::Kong(kong) => Delivery::deliver(kong.as_ref(), document, revision).await,
        }
    }

    async fn ensure(&self, document: &str, revision: &str) -> Result<bool, DeliveryError> {
        match self {
            Self::Envoy(envoy) => envoy.ensure(document, revision).await,
            Self::Kong(kong) => kong.ensure(document, revision).await,
        }
    }
}
