//! `POST /v1/events/github` and `POST /v1/events/gitlab`: platforms say a task ended.
//! HTTP only: the headers that matter and the body's exact bytes go to the broker
//! (`exchange/events.rs`), which authenticates the delivery and ends the task.

use super::error::{refused, reject};
use super::limits::HttpRejection;
use super::{App, ClientAddr};
use crate::exchange::{Delivery, Platform};
use crate::ids::random_id;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

pub(super) async fn github(
    State(app): State<Arc<App>>,
    client: Option<axum::Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    deliver(app, client, headers, body, Platform::Github).await
}

pub(super) async fn gitlab(
    State(app): State<Arc<App>>,
    client: Option<axum::Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    deliver(app, client, headers, body, Platform::Gitlab).await
}

async fn deliver(
    app: Arc<App>,
    client: Option<axum::Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
    platform: Platform,
) -> Response {
    if client.is_some_and(|c| !app.limiter.admit(c.0.0.ip())) {
        return reject(HttpRejection::RateLimited);
    }
    let Ok(body) = body else { return reject(HttpRejection::BodyTooLarge) };
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let delivery = match platform {
        Platform::Github => Delivery {
            platform,
            event: h("x-github-event"),
            id: h("x-github-delivery"),
            signature: h("x-hub-signature-256"),
            timestamp: None,
            token: None,
            body: &body,
        },
        Platform::Gitlab => Delivery {
            platform,
            event: h("x-gitlab-event"),
            id: h("webhook-id").or_else(|| h("idempotency-key")).or_else(|| h("x-gitlab-event-uuid")),
            signature: h("webhook-signature"),
            timestamp: h("webhook-timestamp"),
            token: h("x-gitlab-token"),
            body: &body,
        },
    };
    let request_id = random_id(12).unwrap_or_default();
    match app.broker.task_event(delivery, &request_id).await {
        Ok(outcome) => axum::Json(outcome).into_response(),
        Err(r) => refused(&r),
    }
}
