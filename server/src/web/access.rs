//! Who the request (or socket) is, and whether it may: the credential's role, checked against what the route
//! allows, with every refusal counted under its reason. Revocations made on another instance are known through
//! the store.

use axum::http::HeaderMap;
use protocol::problem::{ErrorCode, Problem};

use super::{error::ApiError, AppState};
use crate::{
    auth::{revoked, Role},
    clock::now_ms,
};

/// The role the request's bearer credential proves, which `allowed` must accept (counted when refused).
pub(crate) fn require(
    state: &AppState,
    headers: &HeaderMap,
    what: &str,
    allowed: impl FnOnce(&Role) -> bool,
) -> Result<Role, ApiError> {
    state.auth.require(headers, now_ms(), what, allowed).map_err(|e| refused(state, e))
}

/// The role a request's (or handshake's) `Authorization: Bearer` header proves, if it has one (counted when
/// refused).
pub(crate) fn bearer(state: &AppState, headers: &HeaderMap) -> Result<Option<Role>, Problem> {
    state.auth.from_headers(headers, now_ms()).inspect_err(|e| state.metrics.auth_refused(e.code))
}

/// Counts a refused credential and makes it the HTTP error.
pub(crate) fn refused(state: &AppState, problem: Problem) -> ApiError {
    state.metrics.auth_refused(problem.code);
    ApiError::from(problem)
}

/// Refuses a viewer whose link was revoked, here or on another instance (known through the store).
pub(crate) async fn not_revoked(state: &AppState, role: &Role) -> Result<(), Problem> {
    let Role::Viewer { driver_id, issued_ms, .. } = role else { return Ok(()) };
    if let Ok(Some(before)) = state.lookups.shares_revoked_before(driver_id).await {
        if *issued_ms <= before {
            state.auth.revoke(driver_id, before);
            state.metrics.auth_refused(ErrorCode::ShareRevoked);
            return Err(revoked());
        }
    }
    Ok(())
}

/// Whether `role` may watch `driver_id` now (counted when not).
pub(crate) async fn may_watch(state: &AppState, role: &Role, driver_id: &str) -> Result<(), Problem> {
    if !role.may_track(driver_id) {
        state.metrics.auth_refused(ErrorCode::Forbidden);
        return Err(Problem::field(ErrorCode::Forbidden, "token", "this credential may not watch this driver"));
    }
    not_revoked(state, role).await
}
