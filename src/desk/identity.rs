//! The identity seam: the host says who a request is, with its own login.
//!
//! The desk never sees the shop's passwords or sessions. When a widget
//! opens a session, the desk asks [`Identity::customer`]: a shopper logged
//! in to the shop is a visitor whose id *is* the shop's customer id, so a
//! `DataAdapter` finds their orders; anyone else is a guest with an id the
//! desk makes up. A console is an agent when [`Identity::agent`] says so
//! (the host's own staff login), or after [`Identity::sign_in`] with a
//! password, for hosts that let the desk show a sign-in form.
//!
//! Either way the desk then issues its own signed token (see
//! [`Signer`](super::Signer)), which the browser presents on the socket and
//! the API, so the host's login is consulted once per session, not per frame.

use async_trait::async_trait;
use axum::http::request::Parts;

use cs_core::{AgentId, VisitorId};

/// A shopper logged in to the shop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Customer {
    /// The shop's customer id, used as the visitor id.
    pub id: VisitorId,
    /// What agents see instead of the id.
    pub name: Option<String>,
}

/// Why the host could not say who a request is.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The host offers no password sign-in; agents sign in through its own login.
    #[error("this desk has no sign-in form; agents sign in through the shop's own login")]
    SignInNotOffered,
    /// The host's session store or identity service failed.
    #[error("the shop's login could not be checked: {0}; retry shortly")]
    Unavailable(String),
}

/// Who a request is, in the host's terms. Every method has a default that
/// knows nobody, so a host implements only what it has.
///
/// ```
/// use async_trait::async_trait;
/// use axum::http::request::Parts;
/// use cs::core::{AgentId, VisitorId};
/// use cs::desk::{Customer, Identity, IdentityError};
///
/// /// The shop's session cookie `shop_user=ID` (a real shop looks it up).
/// struct ShopLogin;
///
/// #[async_trait]
/// impl Identity for ShopLogin {
///     async fn customer(&self, request: &Parts) -> Result<Option<Customer>, IdentityError> {
///         let cookie = request.headers.get("cookie").and_then(|v| v.to_str().ok()).unwrap_or("");
///         let id = cookie.split("; ").find_map(|c| c.strip_prefix("shop_user="));
///         Ok(id.and_then(|id| VisitorId::new(id).ok()).map(|id| Customer { id, name: None }))
///     }
/// }
/// ```
#[async_trait]
pub trait Identity: Send + Sync + 'static {
    /// The shop's logged-in customer behind this request, if any.
    ///
    /// # Errors
    /// The host's login could not be checked.
    async fn customer(&self, request: &Parts) -> Result<Option<Customer>, IdentityError> {
        let _ = request;
        Ok(None)
    }

    /// The agent behind this request, by the host's own staff login, if any.
    ///
    /// # Errors
    /// The host's login could not be checked.
    async fn agent(&self, request: &Parts) -> Result<Option<AgentId>, IdentityError> {
        let _ = request;
        Ok(None)
    }

    /// Checks a login and password typed into the console's sign-in form.
    /// `Ok(None)` is a wrong login or password (the desk says so without
    /// telling which).
    ///
    /// # Errors
    /// [`IdentityError::SignInNotOffered`] (the default) hides the form.
    async fn sign_in(&self, login: &str, password: &str) -> Result<Option<AgentId>, IdentityError> {
        let _ = (login, password);
        Err(IdentityError::SignInNotOffered)
    }

    /// Whether the console shows a sign-in form; `true` when
    /// [`Identity::sign_in`] is implemented.
    fn offers_sign_in(&self) -> bool {
        false
    }
}

/// Knows nobody: every shopper is a guest, and no agent can sign in. The
/// default, for trying the desk out.
#[derive(Clone, Copy, Debug, Default)]
pub struct GuestsOnly;

impl Identity for GuestsOnly {}
