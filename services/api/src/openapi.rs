//! The OpenAPI 3.1 document, generated from the handlers and types.

use axum::response::IntoResponse;
use axum::Json;
use utoipa::OpenApi;

use crate::{error, gitops, policies};

#[derive(OpenApi)]
#[openapi(
    info(title = "Meridian", description = "Multi-cloud traffic governance control plane: GlobalTrafficPolicy API."),
    paths(
        policies::create,
        policies::list,
        policies::get,
        policies::replace,
        policies::patch,
        policies::delete,
        policies::revisions,
        policies::rollback,
        gitops::list,
        gitops::create,
        gitops::get,
        gitops::replace,
        gitops::delete,
        gitops::sync,
        gitops::status,
        gitops::syncs,
        gitops::webhook,
        gitops::apply_set,
    ),
    components(schemas(error::ErrorBody, meridian_policy::FieldError)),
    tags(
        (name = "policies", description = "GlobalTrafficPolicy resources"),
        (name = "gitops", description = "Policy repositories synced atomically"),
    )
)]
pub struct ApiDoc;

pub async fn serve() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}
