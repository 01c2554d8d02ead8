//! The OpenAPI 3.1 document, generated from the handlers and types.

use axum::response::IntoResponse;
use axum::Json;
use utoipa::OpenApi;

use crate::{error, policies};

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
    ),
    components(schemas(error::ErrorBody, meridian_policy::FieldError)),
    tags((name = "policies", description = "GlobalTrafficPolicy resources"))
)]
pub struct ApiDoc;

pub async fn serve() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}
