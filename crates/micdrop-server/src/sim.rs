//! The simulators of `serve --sim` (feature `sim`, on by default): micdrop-sim's script and
//! handle. Without the feature these are empty stand-ins that no value can have, so that
//! [`App::start`](crate::App::start) keeps one signature.

#[cfg(feature = "sim")]
pub use micdrop_sim::{SimHandle, SimScript};

/// Stand-in for micdrop-sim's script in a build without the `sim` feature (no value exists).
#[cfg(not(feature = "sim"))]
#[derive(Debug, Clone)]
pub enum SimScript {}

/// Stand-in for micdrop-sim's handle in a build without the `sim` feature (no value exists).
#[cfg(not(feature = "sim"))]
#[derive(Debug)]
pub enum SimHandle {}

#[cfg(not(feature = "sim"))]
impl SimHandle {
    /// Never called: no value exists.
    pub async fn shutdown(self) {
        match self {}
    }
}
