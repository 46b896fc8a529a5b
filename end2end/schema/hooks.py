"""Checks of pulsemap's own that schemathesis runs beside its built-in ones (SCHEMATHESIS_HOOKS=hooks)."""

import schemathesis


@schemathesis.check
def error_body_has_a_code(ctx, response, case):
    """Every error of the API (4xx and 5xx, JSON) is `{"error": {"code", "message", "field"?}}`."""
    if response.status_code < 400:
        return None
    path = case.operation.path
    if not (path.startswith("/api/") or path.startswith("/fn/") or path.startswith("/ws/") or path in ("/healthz", "/metrics")):
        return None
    try:
        body = response.json()
    except Exception as error:  # noqa: BLE001 - any unreadable body is the failure reported
        raise AssertionError(f"{response.status_code} without a JSON error body: {response.text[:200]!r}") from error
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("code"), str) or not error["code"]:
        raise AssertionError(f"{response.status_code} error body without its code: {response.text[:200]!r}")
    return None
