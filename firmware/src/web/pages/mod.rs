//! One module per page; each reads and acts through [`super::api::Api`] only.

pub mod backups;
pub mod calls;
pub mod config;
pub mod dashboard;
pub mod extensions;
pub mod firewall;
pub mod system;
pub mod updates;
pub mod voicemail;

use axum::Router;

use super::app::AppState;

/// Every page's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .merge(dashboard::routes())
        .merge(extensions::routes())
        .merge(calls::routes())
        .merge(firewall::routes())
        .merge(config::routes())
        .merge(voicemail::routes())
        .merge(backups::routes())
        .merge(system::routes())
        .merge(updates::routes())
}
